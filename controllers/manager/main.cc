// ephemera-controller-manager: parses flags and runs the manager.
#include <iostream>
#include <vector>

#include "controllers/manager/manager.h"
#include "controllers/manager/options.h"

int main(int argc, char** argv) {
  using namespace ephemera::controllers;  // NOLINT(google-build-using-namespace)
  ManagerOptions options;
  const ephemera::Status s =
      ParseManagerOptions(std::vector<std::string>(argv + 1, argv + argc), &options);
  if (options.help) {
    std::cout << ManagerUsage();
    return 0;
  }
  if (!s.ok()) {
    std::cerr << "ephemera-controller-manager: " << s.ToString() << "\n";
    return 2;
  }
  return RunManager(options);
}
