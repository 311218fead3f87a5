// Where the storage-capacity controller gets its numbers: the CSI driver's GetCapacity.
//
// CapacitySource is the seam between the controller and gRPC, so that the controller can be
// unit-tested with a fake. GrpcCapacitySource talks to one driver on a unix socket (the "central"
// deployment of external-provisioner's capacity feature).
//
// Thread safety: implementations are safe for concurrent use.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"

namespace ephemera::controllers {

// A topology segment: topology key -> value (e.g. pmem-csi.ephemera.io/node -> node-1). Empty =
// the whole cluster.
using Segment = std::map<std::string, std::string>;

struct CapacityResult {
  int64_t available = 0;
  std::optional<int64_t> maximum_volume_size;
};

class CapacitySource {
 public:
  virtual ~CapacitySource() = default;
  // GetPluginInfo: the driver's name.
  virtual StatusOr<std::string> DriverName() = 0;
  // ControllerGetCapabilities: OK when the driver offers GET_CAPACITY, FAILED_PRECONDITION with a
  // message saying so when it does not, another code when it cannot be asked.
  virtual Status CheckGetCapacity() = 0;
  // GetCapacity for a class's parameters within a segment.
  virtual StatusOr<CapacityResult> GetCapacity(
      const Segment& segment, const std::map<std::string, std::string>& params) = 0;
};

// "unix:///path" (or a bare absolute path). `timeout` bounds every call.
StatusOr<std::unique_ptr<CapacitySource>> NewGrpcCapacitySource(
    const std::string& address, std::chrono::milliseconds timeout = std::chrono::seconds(10));

}  // namespace ephemera::controllers
