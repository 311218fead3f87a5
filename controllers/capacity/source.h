// Where the storage-capacity controller gets its numbers: the CSI driver's GetCapacity.
//
// CapacitySource is the seam between the controller and gRPC, so that the controller can be
// unit-tested with a fake. GrpcCapacitySource talks to one driver on a unix socket (the "central"
// deployment of external-provisioner's capacity feature).
//
// Thread safety: implementations are safe for concurrent use.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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
  // GetCapacity for a class's parameters within a segment; `nodes` are the nodes in the
  // segment (a per-node source asks one of them; a central source ignores them).
  virtual StatusOr<CapacityResult> GetCapacity(const Segment& segment,
                                               const std::map<std::string, std::string>& params,
                                               const std::vector<std::string>& nodes) = 0;
  // The same call without blocking the caller: `done` runs exactly once with the answer, on the
  // caller's thread or on another one. The returned function (may be empty) cancels the call:
  // `done` then runs soon with CANCELLED, if it has not yet. It may be called after `done` ran.
  // The default calls GetCapacity inline; the gRPC sources do not block: a node that does not
  // answer holds no thread of the caller's.
  using CapacityCallback = std::function<void(StatusOr<CapacityResult>)>;
  using Cancel = std::function<void()>;
  virtual Cancel GetCapacityAsync(const Segment& segment,
                                  const std::map<std::string, std::string>& params,
                                  const std::vector<std::string>& nodes,
                                  // A sink: the overrides take ownership of `done`.
                                  // NOLINTNEXTLINE(performance-unnecessary-value-param): a sink
                                  CapacityCallback done) {
    done(GetCapacity(segment, params, nodes));
    return {};
  }
  // The node whose own endpoint GetCapacity(…, nodes) asks, or "" when the answer does not come
  // from one node (a central source, or no node of `nodes` has an endpoint). The controller
  // reports an endpoint that cannot be reached on this node.
  virtual std::string NodeFor(const std::vector<std::string>& /*nodes*/) const { return ""; }
};

// PEM files of a mutual-TLS client: the CA that signed the server, our certificate and key.
struct TlsFiles {
  std::string ca, cert, key;
  // When set, the server certificate is verified for this DNS name instead of HOST (the
  // certificates of --bootstrap-tls name no address: pod IPs are not known in advance).
  std::string server_name;
};

// "unix:///path" (or a bare absolute path). `timeout` bounds every call.
StatusOr<std::unique_ptr<CapacitySource>> NewGrpcCapacitySource(
    const std::string& address, std::chrono::milliseconds timeout = std::chrono::seconds(10));

// "HOST:PORT" of a driver's read-only --capacity-listen, with mutual TLS: the server certificate
// is verified against `tls.ca` (for HOST or tls.server_name), and we present `tls.cert`. Files are
// read once.
StatusOr<std::unique_ptr<CapacitySource>> NewTlsCapacitySource(
    const std::string& address, const TlsFiles& tls,
    std::chrono::milliseconds timeout = std::chrono::seconds(10));

// One source per node (--csi-node-endpoint NODE=HOST:PORT): GetCapacity asks the first node of
// the segment that has an endpoint; NOT_FOUND when none has. DriverName and CheckGetCapacity ask
// the endpoints in turn until one answers.
std::unique_ptr<CapacitySource> NewPerNodeCapacitySource(
    std::map<std::string, std::shared_ptr<CapacitySource>> by_node);

}  // namespace ephemera::controllers
