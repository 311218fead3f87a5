// DriverFixture (see driver_fixture.h).
#include "driver_fixture.h"

#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "csi/backends/loop_device.h"
#include "csi/mount_util.h"
#include "tests/test_paths.h"

extern char** environ;

namespace ephemera::csi::testing {

namespace {

std::string DriverBinary() {
  // getenv races only with a change of the environment: the test binaries change theirs (setenv)
  // on the main thread before they start anything.
  // NOLINTNEXTLINE(concurrency-mt-unsafe): no concurrent setenv (above)
  const char* env = getenv("EPHEMERA_CSI_DRIVER");
  return env != nullptr ? env : ::ephemera::testing::kCsiDriverPath;
}

}  // namespace

::csi::v1::VolumeCapability MountCapability(const std::string& fs_type) {
  ::csi::v1::VolumeCapability capability;
  capability.mutable_mount()->set_fs_type(fs_type);
  capability.mutable_access_mode()->set_mode(
      ::csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  return capability;
}

DriverFixture::DriverFixture(std::string pool, std::vector<std::string> extra_flags)
    : pool_(std::move(pool)), extra_flags_(std::move(extra_flags)) {
  // ctest reports this text as a skip (SKIP_REGULAR_EXPRESSION): without root there are no loop
  // devices and mounts, and the test did not run.
  if (geteuid() != 0) FAIL("SKIP: needs root (loop devices and mounts)");
  std::string pattern = "/tmp/ephemera-csi-it-XXXXXX";
  work_ = mkdtemp(pattern.data());
  Start();
}

DriverFixture::~DriverFixture() {
  Kill(SIGKILL);
  // Deepest mounts first, then loop devices of the pool, then the files.
  std::vector<std::string> mounts = Mounts();
  std::sort(mounts.rbegin(), mounts.rend());
  for (const std::string& m : mounts)
    umount2(m.c_str(), MNT_DETACH);
  for (const std::string& loop : Loops()) {
    if (!DetachLoop(loop).ok()) std::fprintf(stderr, "cleanup: cannot detach %s\n", loop.c_str());
  }
  std::error_code ec;
  std::filesystem::remove_all(work_, ec);
}

void DriverFixture::Start() {
  std::string socket = work_ + "/csi.sock";
  std::vector<std::string> args = {DriverBinary(),
                                   "--endpoint=unix://" + socket,
                                   "--node-id=it-node",
                                   "--backend=file",
                                   "--file-dir=" + file_dir(),
                                   "--state-dir=" + state_dir(),
                                   "--file-capacity=" + pool_,
                                   "--default-volume-size=16Mi"};
  args.insert(args.end(), extra_flags_.begin(), extra_flags_.end());
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path().c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  unlink(socket.c_str());
  int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(rc == 0);
  for (int i = 0; i < 200 && access(socket.c_str(), F_OK) != 0; ++i) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      std::ifstream log(log_path());
      std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
      FAIL("driver exited at start:\n" << text);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  REQUIRE(access(socket.c_str(), F_OK) == 0);
  Connect();
}

void DriverFixture::Connect() {
  auto channel =
      grpc::CreateChannel("unix://" + work_ + "/csi.sock", grpc::InsecureChannelCredentials());
  controller_ = ::csi::v1::Controller::NewStub(channel);
  node_ = ::csi::v1::Node::NewStub(channel);
  identity_ = ::csi::v1::Identity::NewStub(channel);
}

void DriverFixture::Kill(int signal) {
  if (pid_ <= 0) return;
  kill(pid_, signal);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

std::vector<std::string> DriverFixture::PoolFiles() const {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(file_dir(), ec)) {
    files.push_back(e.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::string> DriverFixture::Records() const {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(state_dir(), ec)) {
    if (e.path().filename() == "snapshots" && e.is_directory()) continue;  // listed below
    files.push_back(e.path().filename().string());
  }
  for (const auto& e : std::filesystem::directory_iterator(state_dir() + "/snapshots", ec)) {
    files.push_back("snapshots/" + e.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::string> DriverFixture::Loops() const {
  std::vector<std::string> loops;
  std::error_code ec;
  std::string dir = std::filesystem::weakly_canonical(file_dir(), ec).string();
  StatusOr<std::vector<LoopInfo>> all = ListLoopsInDir(dir);
  if (all.ok()) {
    for (const LoopInfo& l : *all)
      loops.push_back(l.device);
  }
  return loops;
}

std::vector<std::string> DriverFixture::Mounts() const {
  std::vector<std::string> mounts;
  StatusOr<std::vector<MountEntry>> entries = ReadMountInfo();
  if (entries.ok()) {
    for (const MountEntry& e : *entries) {
      if (e.mount_point.starts_with(work_ + "/")) mounts.push_back(e.mount_point);
    }
  }
  return mounts;
}

int64_t DriverFixture::AvailableCapacity() {
  grpc::ClientContext context;
  ::csi::v1::GetCapacityRequest request;
  ::csi::v1::GetCapacityResponse response;
  grpc::Status status = controller_->GetCapacity(&context, request, &response);
  REQUIRE(status.ok());
  return response.available_capacity();
}

}  // namespace ephemera::csi::testing
