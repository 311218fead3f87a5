// The per-node capacity source with endpoints found from the driver's pods
// (--csi-node-endpoints-selector): every pod of the selector gives its node (spec.nodeName) and
// address (status.podIP) plus the port of the driver's --capacity-listen. The map follows the
// pods as a watch reports them: a pod that gets its IP adds its node, a deleted or finished pod
// removes it, a pod with a new IP moves its node to the new address.
//
// Thread safety: the CapacitySource calls are safe from any thread; Start/Stop from one.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "apiclient/client.h"
#include "apiclient/informer.h"
#include "apiclient/manager.h"
#include "controllers/capacity/source.h"

namespace ephemera::controllers {

// node -> "IP:PORT" (IPv6 as "[IP]:PORT") from pod objects. Skipped: pods being deleted,
// Succeeded or Failed, without a node or without a well-formed IP. Two pods on one node: a Running
// one wins over one that is not, then the first by name.
std::map<std::string, std::string> EndpointsFromPods(const std::vector<apiclient::ObjectPtr>& pods,
                                                     int port);

class PodEndpointSource final : public CapacitySource, public apiclient::Runnable {
 public:
  // Makes the source for one endpoint (a TLS source in production, a fake in unit tests).
  using Factory =
      std::function<StatusOr<std::shared_ptr<CapacitySource>>(const std::string& address)>;
  PodEndpointSource(apiclient::ApiClientPtr client, std::string ns, std::string selector, int port,
                    Factory factory);
  ~PodEndpointSource() override;

  // Runnable, leader-only (only the storage-capacity controller asks it): Start() starts the pod
  // watch and returns once it has synced (DEADLINE_EXCEEDED after 120 s).
  std::string Name() const override { return "capacity-endpoints"; }
  Status Start(std::stop_token stop) override;
  void Stop() override;
  // node -> address as of now.
  std::map<std::string, std::string> Endpoints();

  StatusOr<std::string> DriverName() override;
  // The listener serves only GetCapacity: OK (also while no pod is known yet).
  Status CheckGetCapacity() override { return Status::Ok(); }
  StatusOr<CapacityResult> GetCapacity(const Segment& segment,
                                       const std::map<std::string, std::string>& params,
                                       const std::vector<std::string>& nodes) override;
  Cancel GetCapacityAsync(const Segment& segment, const std::map<std::string, std::string>& params,
                          const std::vector<std::string>& nodes, CapacityCallback done) override;
  std::string NodeFor(const std::vector<std::string>& nodes) const override;

 private:
  struct Endpoint {
    std::string address;
    std::shared_ptr<CapacitySource> source;
  };
  void Rebuild();
  // The first of `nodes` with an endpoint, or "" and null.
  std::pair<std::string, std::shared_ptr<CapacitySource>> SourceFor(
      const std::vector<std::string>& nodes) const;

  apiclient::Informer pods_;
  const int port_;
  const Factory factory_;
  mutable std::mutex mu_;
  std::map<std::string, Endpoint> by_node_;  // GUARDED_BY(mu_)
};

}  // namespace ephemera::controllers
