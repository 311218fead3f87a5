// A running ephemera-pmem-csi for integration tests: its own temporary directory (socket, file
// pool, state), gRPC stubs, SIGKILL and restart, and a destructor that removes every mount, loop
// device and file below the directory, whether the test passed or failed.
//
// Thread safety: the stubs may be used from several threads; Start/Kill/Stop from one.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "csi/proto/csi.grpc.pb.h"

namespace ephemera::csi::testing {

class DriverFixture {
 public:
  // `extra_flags` are appended to the driver's command line.
  explicit DriverFixture(std::string pool = "1Gi", std::vector<std::string> extra_flags = {});
  ~DriverFixture();
  DriverFixture(const DriverFixture&) = delete;
  DriverFixture& operator=(const DriverFixture&) = delete;

  void Start();           // starts the driver and waits for its socket
  void Kill(int signal);  // signals the driver and reaps it
  void Restart() {
    Kill(9);
    Start();
  }

  const std::string& work() const { return work_; }
  std::string file_dir() const { return work_ + "/files"; }
  std::string state_dir() const { return work_ + "/state"; }
  std::string log_path() const { return work_ + "/driver.log"; }

  ::csi::v1::Controller::Stub& controller() { return *controller_; }
  ::csi::v1::Node::Stub& node() { return *node_; }
  ::csi::v1::Identity::Stub& identity() { return *identity_; }

  // Files in the pool directory, records in the state directory (snapshots' as
  // "snapshots/<file>"), loop devices on pool files, mounts below the work directory.
  std::vector<std::string> PoolFiles() const;
  std::vector<std::string> Records() const;
  std::vector<std::string> Loops() const;
  std::vector<std::string> Mounts() const;

  int64_t AvailableCapacity();

 private:
  void Connect();
  std::string pool_;
  std::vector<std::string> extra_flags_;
  std::string work_;
  pid_t pid_ = -1;
  std::unique_ptr<::csi::v1::Controller::Stub> controller_;
  std::unique_ptr<::csi::v1::Node::Stub> node_;
  std::unique_ptr<::csi::v1::Identity::Stub> identity_;
};

// A mount capability for `fs_type` with SINGLE_NODE_WRITER.
::csi::v1::VolumeCapability MountCapability(const std::string& fs_type = "ext4");

}  // namespace ephemera::csi::testing
