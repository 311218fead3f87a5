#include "controllers/capacity/discovery.h"

#include <arpa/inet.h>

#include "common/log.h"

namespace ephemera::controllers {
namespace {

using apiclient::Field;
using apiclient::ObjectPtr;

// "IP:PORT" for a well-formed IPv4 or IPv6 address, "" otherwise (status.podIP is input).
std::string Address(const std::string& ip, int port) {
  in_addr v4{};
  in6_addr v6{};
  if (ip.size() < 64 && inet_pton(AF_INET, ip.c_str(), &v4) == 1) {
    return ip + ":" + std::to_string(port);
  }
  if (ip.size() < 64 && inet_pton(AF_INET6, ip.c_str(), &v6) == 1) {
    return "[" + ip + "]:" + std::to_string(port);
  }
  return "";
}

}  // namespace

std::map<std::string, std::string> EndpointsFromPods(const std::vector<ObjectPtr>& pods, int port) {
  struct Choice {
    bool running = false;
    std::string pod, address;
  };
  std::map<std::string, Choice> chosen;
  for (const auto& pod : pods) {
    if (!Field(*pod, "metadata", "deletionTimestamp").empty()) continue;
    const std::string phase = Field(*pod, "status", "phase");
    if (phase == "Succeeded" || phase == "Failed") continue;
    const std::string node = Field(*pod, "spec", "nodeName");
    const std::string address = Address(Field(*pod, "status", "podIP"), port);
    if (node.empty() || address.empty()) continue;
    Choice c{phase == "Running", Field(*pod, "metadata", "name"), address};
    auto it = chosen.find(node);
    if (it == chosen.end() || (c.running && !it->second.running) ||
        (c.running == it->second.running && c.pod < it->second.pod)) {
      chosen[node] = c;
    }
  }
  std::map<std::string, std::string> out;
  for (const auto& [node, c] : chosen)
    out[node] = c.address;
  return out;
}

PodEndpointSource::PodEndpointSource(apiclient::ApiClientPtr client, std::string ns,
                                     std::string selector, int port, Factory factory)
    : pods_(std::move(client),
            apiclient::InformerOptions{.resource = apiclient::resources::kPods,
                                       .ns = std::move(ns),
                                       .label_selector = std::move(selector),
                                       .transform = apiclient::DropManagedFields}),
      port_(port),
      factory_(std::move(factory)) {
  pods_.AddHandlers({.on_add = [this](const ObjectPtr&) { Rebuild(); },
                     .on_update = [this](const ObjectPtr&, const ObjectPtr&) { Rebuild(); },
                     .on_delete = [this](const ObjectPtr&) { Rebuild(); }});
}

PodEndpointSource::~PodEndpointSource() {
  Stop();
}

Status PodEndpointSource::Start(std::stop_token stop) {
  pods_.Start();
  EPHEMERA_RETURN_IF_ERROR(apiclient::WaitForCacheSync(stop, std::chrono::seconds(120), {&pods_}));
  Rebuild();
  return Status::Ok();
}

void PodEndpointSource::Stop() {
  pods_.Stop();
}

void PodEndpointSource::Rebuild() {
  const auto wanted = EndpointsFromPods(pods_.store().List(), port_);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = by_node_.begin(); it != by_node_.end();) {
    if (wanted.count(it->first) == 0) {
      log::Info("capacity endpoint removed",
                {{"node", it->first}, {"address", it->second.address}});
      it = by_node_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [node, address] : wanted) {
    auto it = by_node_.find(node);
    if (it != by_node_.end() && it->second.address == address) continue;
    auto source = factory_(address);
    if (!source.ok()) {
      log::Error("cannot use a capacity endpoint", source.status(),
                 {{"node", node}, {"address", address}});
      by_node_.erase(node);
      continue;
    }
    log::Info("capacity endpoint", {{"node", node}, {"address", address}});
    by_node_[node] = {address, *source};
  }
}

std::map<std::string, std::string> PodEndpointSource::Endpoints() {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, std::string> out;
  for (const auto& [node, e] : by_node_)
    out[node] = e.address;
  return out;
}

StatusOr<std::string> PodEndpointSource::DriverName() {
  std::map<std::string, Endpoint> copy;
  {
    std::lock_guard<std::mutex> lock(mu_);
    copy = by_node_;
  }
  Status last = Status::NotFound("no pod of --csi-node-endpoints-selector has a node and an IP");
  for (const auto& [node, e] : copy) {
    auto name = e.source->DriverName();
    if (name.ok()) return name;
    last = name.status().WithContext("node " + node);
  }
  return last;
}

std::pair<std::string, std::shared_ptr<CapacitySource>> PodEndpointSource::SourceFor(
    const std::vector<std::string>& nodes) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& n : nodes) {
    auto it = by_node_.find(n);
    if (it != by_node_.end()) return {n, it->second.source};
  }
  return {"", nullptr};
}

StatusOr<CapacityResult> PodEndpointSource::GetCapacity(
    const Segment& segment, const std::map<std::string, std::string>& params,
    const std::vector<std::string>& nodes) {
  auto [node, source] = SourceFor(nodes);
  if (!source) return Status::NotFound("no driver pod with an IP on any node of the segment");
  auto result = source->GetCapacity(segment, params, {node});
  if (!result.ok()) return result.status().WithContext("node " + node);
  return result;
}

CapacitySource::Cancel PodEndpointSource::GetCapacityAsync(
    const Segment& segment, const std::map<std::string, std::string>& params,
    const std::vector<std::string>& nodes, CapacityCallback done) {
  auto [node, source] = SourceFor(nodes);
  if (!source) {
    done(Status::NotFound("no driver pod with an IP on any node of the segment"));
    return {};
  }
  return source->GetCapacityAsync(
      segment, params, {node}, [node = node, done = std::move(done)](StatusOr<CapacityResult> r) {
        if (!r.ok()) r = r.status().WithContext("node " + node);
        done(std::move(r));
      });
}

std::string PodEndpointSource::NodeFor(const std::vector<std::string>& nodes) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& n : nodes)
    if (by_node_.count(n) > 0) return n;
  return "";
}

}  // namespace ephemera::controllers
