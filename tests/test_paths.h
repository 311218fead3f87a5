#pragma once

// Where the tests find the checkout, the build tree and the CSI driver's binary. The values are
// defined in one source file that CMake generates into the build tree (tests/CMakeLists.txt), not
// passed as -D definitions: a path compiled into a test file makes ccache miss that file in every
// other clone of the repository (a CI run recompiled 9 test files in each of three build trees,
// about 5 minutes on 2 cores); in one tiny generated file the miss costs nothing.
namespace ephemera::testing {

extern const char* const kSourceDir;      // the checkout
extern const char* const kBinaryDir;      // the CMake build tree (binaries in bin/)
extern const char* const kCsiDriverPath;  // ephemera-pmem-csi of this build tree

}  // namespace ephemera::testing
