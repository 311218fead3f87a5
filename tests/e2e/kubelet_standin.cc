// ephemera-kubelet-standin: what kubelet does for CSI volumes on one node, for end-to-end tests on
// a control plane without kubelets (tests/e2e/run, scripts/demo).
//
//  - at start: NodeGetInfo, then the CSINode object for the node (driver name, node ID, topology
//    keys) and the topology labels on the Node, as kubelet's CSI plugin registration does;
//  - for every pod bound to the node: NodeStageVolume + NodePublishVolume for each volume of the
//    driver (PVCs, generic ephemeral volumes once their PVC is bound, and CSI inline volumes with
//    kubelet's volume handle and pod information), then it plays the container: writes a file
//    into each volume and reads it back; then it reports the pod Running and Ready (and the pod IP
//    given by --pod-ip), like kubelet's status manager;
//  - for a pod being deleted: NodeUnpublishVolume + NodeUnstageVolume, then it deletes the pod for
//    good (grace period 0, the pod's UID as precondition), as kubelet does when containers stopped;
//  - online expansion of the PVCs mounted here, as kubelet's NodeExpander
//    (pkg/volume/util/operationexecutor/node_expander.go, pkg/volume/csi/expander.go) does it: when
//    the PV is larger than the PVC's status.capacity and csi-resizer left the claim in
//    NodeResizePending (or NodeResizeInProgress), it marks NodeResizeInProgress, calls
//    NodeExpandVolume (publish path, staging path, required_bytes = status.allocatedResources, the
//    mount capability), and on success sets status.capacity and drops the resize status and
//    conditions; an infeasible error (INVALID_ARGUMENT, OUT_OF_RANGE, NOT_FOUND) makes it
//    NodeResizeInfeasible with a NodeResizeError condition, another final error only adds the
//    condition; failures back off exponentially (1 s to 32 s), as kubelet's operations do.
//
// It reconciles level-based: every pod event, and every second, it compares what is mounted with
// what the node's pods need. It is a test tool: it runs as the cluster admin, not as a node.
#include <grpcpp/grpcpp.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "apiclient/config.h"
#include "apiclient/informer.h"
#include "apiclient/resource.h"
#include "apiclient/rest_client.h"
#include "common/quantity.h"
#include "csi/proto/csi.grpc.pb.h"

namespace {

using ephemera::Status;
using ephemera::apiclient::ApiClientPtr;
using ephemera::apiclient::Field;
using ephemera::apiclient::Object;
using ephemera::apiclient::ObjectPtr;
namespace resources = ephemera::apiclient::resources;
namespace fs = std::filesystem;

std::atomic<bool> g_stop{false};

void Log(const std::string& node, const std::string& message) {
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
  std::cerr << stamp << " kubelet-standin[" << node << "] " << message << std::endl;
}

std::string HexSha256(const std::string& data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  std::string hex;
  char buf[3];
  for (unsigned char c : digest) {
    std::snprintf(buf, sizeof buf, "%02x", c);
    hex += buf;
  }
  return hex;
}

// A mounted filesystem of `fs_type` ("" lets the driver choose), one node writing.
void MountCapability(const std::string& fs_type, csi::v1::VolumeCapability* cap) {
  cap->mutable_mount()->set_fs_type(fs_type);
  cap->mutable_access_mode()->set_mode(csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
}

struct Flags {
  std::string kubeconfig;
  std::string node;
  std::string csi_address;  // unix:///path
  std::string root;         // where staging and target paths live
  std::string pod_ip;       // reported for every pod of the node (loopback address per node)
  std::string ns;           // only the pods of this namespace ("": all)
};

// One volume of one pod as kubelet would mount it.
struct Mount {
  std::string pod_uid;
  std::string pod_key;  // namespace/name, for logs
  std::string volume;   // the pod's volume name
  std::string volume_id;
  std::string staging;  // empty for inline volumes
  std::string target;
  // PVC-backed volumes (expansion): the claim, its PV, the filesystem.
  std::string claim_ns;
  std::string claim;
  std::string pv;
  std::string fs_type;
};

// kubelet's gRPC error text: "rpc error: code = OutOfRange desc = ...".
std::string GrpcErrorText(const grpc::Status& s) {
  static const char* const kNames[] = {
      "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
      "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
      "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
      "DataLoss", "Unauthenticated"};
  const int code = s.error_code();
  const std::string name = code >= 0 && code <= 16 ? kNames[code] : std::to_string(code);
  return "rpc error: code = " + name + " desc = " + s.error_message();
}

class Standin {
 public:
  Standin(Flags flags, ApiClientPtr client, const std::shared_ptr<grpc::Channel>& channel)
      : flags_(std::move(flags)),
        client_(std::move(client)),
        identity_(csi::v1::Identity::NewStub(channel)),
        node_(csi::v1::Node::NewStub(channel)) {}

  Status Register();
  void Run();

 private:
  template <typename Call>
  grpc::Status Rpc(Call call) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return call(&context);
  }
  void Sync();
  // Mounts what `pod` needs; true when every volume of the driver is published.
  bool MountPod(const Object& pod);
  void Unmount(const Mount& mount);
  void ReportRunning(const Object& pod);
  // kubelet's online expansion for the PVC-backed volumes mounted here (see the top).
  void ExpandVolumes();
  // true: nothing to do or done; false: failed (backs off).
  bool Expand(const Mount& mount);

  const Flags flags_;
  const ApiClientPtr client_;
  std::unique_ptr<csi::v1::Identity::Stub> identity_;
  std::unique_ptr<csi::v1::Node::Stub> node_;
  std::string driver_;
  std::unique_ptr<ephemera::apiclient::Informer> pods_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool dirty_ = true;
  std::map<std::string, Mount> mounts_;  // key: pod uid + "/" + volume
  std::map<std::string, int> staged_;    // staging path -> publications
  std::set<std::string> reported_;       // pod uids reported Running
  struct Backoff {
    std::chrono::steady_clock::time_point next;
    std::chrono::seconds delay{0};
  };
  std::map<std::string, Backoff> expand_backoff_;  // staging path -> after a failed expansion
};

Status Standin::Register() {
  csi::v1::GetPluginInfoResponse info;
  grpc::Status s = Rpc([&](grpc::ClientContext* c) {
    return identity_->GetPluginInfo(c, csi::v1::GetPluginInfoRequest(), &info);
  });
  if (!s.ok()) return Status::Unavailable("GetPluginInfo: " + s.error_message());
  driver_ = info.name();
  csi::v1::NodeGetInfoResponse node_info;
  s = Rpc([&](grpc::ClientContext* c) {
    return node_->NodeGetInfo(c, csi::v1::NodeGetInfoRequest(), &node_info);
  });
  if (!s.ok()) return Status::Unavailable("NodeGetInfo: " + s.error_message());

  // Topology labels on the Node.
  Object labels = Object::object();
  Object keys = Object::array();
  for (const auto& [key, value] : node_info.accessible_topology().segments()) {
    labels[key] = value;
    keys.push_back(key);
  }
  auto patched = client_->MergePatch(resources::kNodes, "", flags_.node,
                                     Object{{"metadata", {{"labels", labels}}}});
  if (!patched.ok()) return patched.status();
  const Object& node = **patched;

  // The CSINode: named like the node, owned by it.
  Object csinode = {
      {"apiVersion", "storage.k8s.io/v1"},
      {"kind", "CSINode"},
      {"metadata",
       {{"name", flags_.node},
        {"ownerReferences", Object::array({{{"apiVersion", "v1"},
                                            {"kind", "Node"},
                                            {"name", flags_.node},
                                            {"uid", Field(node, "metadata", "uid")}}})}}},
      {"spec",
       {{"drivers",
         Object::array(
             {{{"name", driver_}, {"nodeID", node_info.node_id()}, {"topologyKeys", keys}}})}}}};
  auto existing = client_->Get(resources::kCSINodes, "", flags_.node);
  if (existing.ok()) {
    csinode["metadata"]["resourceVersion"] = Field(**existing, "metadata", "resourceVersion");
    auto updated = client_->Update(resources::kCSINodes, "", csinode);
    if (!updated.ok()) return updated.status();
  } else {
    auto created = client_->Create(resources::kCSINodes, "", csinode);
    if (!created.ok()) return created.status();
  }
  Log(flags_.node, "registered driver " + driver_ + " with node ID " + node_info.node_id());
  return Status::Ok();
}

bool Standin::MountPod(const Object& pod) {
  const std::string ns = Field(pod, "metadata", "namespace");
  const std::string name = Field(pod, "metadata", "name");
  const std::string uid = Field(pod, "metadata", "uid");
  const Object* volumes = nullptr;
  if (pod.contains("spec") && pod["spec"].contains("volumes")) volumes = &pod["spec"]["volumes"];
  bool all = true;
  if (volumes == nullptr || !volumes->is_array()) return true;
  const std::string pod_key = ns + "/" + name;
  const std::string uid_prefix = uid + "/";
  const std::string volumes_dir = flags_.root + "/pods/" + uid + "/volumes/";
  const std::string claim_prefix = name + "-";
  for (const auto& volume : *volumes) {
    const std::string vname = Field(volume, "name");
    const std::string key = uid_prefix + vname;
    if (mounts_.count(key) != 0) continue;
    Mount m{uid, pod_key, vname, "", "", ""};
    m.target = volumes_dir + vname;
    csi::v1::VolumeCapability cap;
    std::map<std::string, std::string> context;
    // podInfoOnMount: the pod's identity goes to the driver.
    context["csi.storage.k8s.io/pod.name"] = name;
    context["csi.storage.k8s.io/pod.namespace"] = ns;
    context["csi.storage.k8s.io/pod.uid"] = uid;
    context["csi.storage.k8s.io/serviceAccount.name"] = Field(pod, "spec", "serviceAccountName");
    std::string claim;
    if (volume.contains("ephemeral")) {
      claim = claim_prefix + vname;
    } else if (volume.contains("persistentVolumeClaim")) {
      claim = Field(volume, "persistentVolumeClaim", "claimName");
    } else if (volume.contains("csi")) {
      if (Field(volume, "csi", "driver") != driver_) continue;
      // kubelet's handle for an inline volume: "csi-" + sha256(pod UID + volume name).
      m.volume_id = "csi-" + HexSha256(uid + vname);
      MountCapability(Field(volume, "csi", "fsType"), &cap);
      context["csi.storage.k8s.io/ephemeral"] = "true";
      if (volume["csi"].contains("volumeAttributes")) {
        for (const auto& [k, v] : volume["csi"]["volumeAttributes"].items()) {
          if (v.is_string()) context[k] = v.get<std::string>();
        }
      }
    } else {
      continue;  // not a CSI volume: nothing for us
    }
    if (!claim.empty()) {
      auto pvc = client_->Get(resources::kPersistentVolumeClaims, ns, claim);
      if (!pvc.ok() || Field(**pvc, "status", "phase") != "Bound") {
        all = false;
        continue;
      }
      if (volume.contains("ephemeral")) {
        // kubelet refuses a PVC of that name that the pod does not own.
        bool owned = false;
        const Object& meta = (**pvc)["metadata"];
        if (meta.contains("ownerReferences")) {
          for (const auto& ref : meta["ownerReferences"]) {
            owned = owned || (Field(ref, "uid") == uid && ref.value("controller", false));
          }
        }
        if (!owned) {
          Log(flags_.node, "pod " + m.pod_key + ": PVC " + claim + " is not owned by the pod");
          all = false;
          continue;
        }
      }
      auto pv = client_->Get(resources::kPersistentVolumes, "", Field(**pvc, "spec", "volumeName"));
      if (!pv.ok()) {
        all = false;
        continue;
      }
      const Object& spec = (**pv)["spec"];
      if (Field(spec, "csi", "driver") != driver_) continue;  // another driver's volume
      m.volume_id = Field(spec, "csi", "volumeHandle");
      MountCapability(Field(spec, "csi", "fsType"), &cap);
      m.claim_ns = ns;
      m.claim = claim;
      m.pv = Field(**pv, "metadata", "name");
      m.fs_type = Field(spec, "csi", "fsType");
      if (spec["csi"].contains("volumeAttributes")) {
        for (const auto& [k, v] : spec["csi"]["volumeAttributes"].items()) {
          if (v.is_string()) context[k] = v.get<std::string>();
        }
      }
      m.staging = flags_.root + "/staging/" + Field(**pv, "metadata", "name");
      if (staged_[m.staging] == 0) {
        fs::create_directories(m.staging);
        csi::v1::NodeStageVolumeRequest stage;
        stage.set_volume_id(m.volume_id);
        stage.set_staging_target_path(m.staging);
        *stage.mutable_volume_capability() = cap;
        for (const auto& [k, v] : context) {
          if (k.rfind("csi.storage.k8s.io/", 0) != 0) (*stage.mutable_volume_context())[k] = v;
        }
        csi::v1::NodeStageVolumeResponse staged;
        grpc::Status s =
            Rpc([&](grpc::ClientContext* c) { return node_->NodeStageVolume(c, stage, &staged); });
        if (!s.ok()) {
          Log(flags_.node, "NodeStageVolume " + m.volume_id + ": " + s.error_message());
          all = false;
          continue;
        }
      }
    }
    fs::create_directories(fs::path(m.target).parent_path());
    csi::v1::NodePublishVolumeRequest publish;
    publish.set_volume_id(m.volume_id);
    publish.set_staging_target_path(m.staging);
    publish.set_target_path(m.target);
    *publish.mutable_volume_capability() = cap;
    for (const auto& [k, v] : context)
      (*publish.mutable_volume_context())[k] = v;
    csi::v1::NodePublishVolumeResponse published;
    grpc::Status s = Rpc(
        [&](grpc::ClientContext* c) { return node_->NodePublishVolume(c, publish, &published); });
    if (!s.ok()) {
      Log(flags_.node,
          "NodePublishVolume " + m.volume_id + " for " + m.pod_key + ": " + s.error_message());
      if (!m.staging.empty() && staged_[m.staging] == 0) staged_.erase(m.staging);
      all = false;
      continue;
    }
    if (!m.staging.empty()) ++staged_[m.staging];
    // The "container": write through the mount and read it back.
    const std::string file = m.target + "/written-by-" + name;
    const std::string text = "pod " + m.pod_key + " volume " + vname + "\n";
    {
      std::ofstream out(file);
      out << text;
    }
    std::ifstream in(file);
    std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (back != text) Log(flags_.node, "data written to " + file + " did not read back");
    mounts_[key] = m;
    Log(flags_.node, "pod " + m.pod_key + " volume " + vname + " (" + m.volume_id +
                         ") published at " + m.target);
  }
  return all;
}

void Standin::Unmount(const Mount& m) {
  csi::v1::NodeUnpublishVolumeRequest unpublish;
  unpublish.set_volume_id(m.volume_id);
  unpublish.set_target_path(m.target);
  csi::v1::NodeUnpublishVolumeResponse unpublished;
  grpc::Status s = Rpc([&](grpc::ClientContext* c) {
    return node_->NodeUnpublishVolume(c, unpublish, &unpublished);
  });
  if (!s.ok()) {
    Log(flags_.node, "NodeUnpublishVolume " + m.volume_id + ": " + s.error_message());
    return;
  }
  mounts_.erase(m.pod_uid + "/" + m.volume);
  if (!m.staging.empty() && --staged_[m.staging] <= 0) {
    csi::v1::NodeUnstageVolumeRequest unstage;
    unstage.set_volume_id(m.volume_id);
    unstage.set_staging_target_path(m.staging);
    csi::v1::NodeUnstageVolumeResponse unstaged;
    s = Rpc(
        [&](grpc::ClientContext* c) { return node_->NodeUnstageVolume(c, unstage, &unstaged); });
    if (!s.ok()) {
      Log(flags_.node, "NodeUnstageVolume " + m.volume_id + ": " + s.error_message());
      ++staged_[m.staging];
      return;
    }
    staged_.erase(m.staging);
    expand_backoff_.erase(m.staging);
    std::error_code ignored;
    fs::remove(m.staging, ignored);
  }
  Log(flags_.node, "pod " + m.pod_key + " volume " + m.volume + " unpublished");
}

void Standin::ReportRunning(const Object& pod) {
  Object status = pod;
  const std::string now = [] {
    const auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return std::string(buf);
  }();
  status["status"]["phase"] = "Running";
  status["status"]["startTime"] = now;
  if (!flags_.pod_ip.empty()) {
    status["status"]["podIP"] = flags_.pod_ip;
    status["status"]["podIPs"] = Object::array({{{"ip", flags_.pod_ip}}});
  }
  status["status"]["conditions"] = Object::array();
  for (const char* type : {"PodScheduled", "Initialized", "ContainersReady", "Ready"}) {
    status["status"]["conditions"].push_back(
        {{"type", type}, {"status", "True"}, {"lastTransitionTime", now}});
  }
  // One running, ready status per container, as kubelet reports it (kubectl's READY column).
  status["status"]["containerStatuses"] = Object::array();
  const auto spec = pod.find("spec");
  const Object no_containers = Object::array();
  const Object& containers = spec != pod.end() && spec->is_object() && spec->contains("containers")
                                 ? (*spec)["containers"]
                                 : no_containers;
  if (containers.is_array()) {
    for (const auto& container : containers) {
      if (!container.is_object()) continue;
      status["status"]["containerStatuses"].push_back(
          {{"name", container.value("name", "")},
           {"image", container.value("image", "")},
           {"imageID", ""},
           {"ready", true},
           {"started", true},
           {"restartCount", 0},
           {"state", {{"running", {{"startedAt", now}}}}}});
    }
  }
  auto updated =
      client_->UpdateStatus(resources::kPods, Field(pod, "metadata", "namespace"), status);
  if (updated.ok()) {
    reported_.insert(Field(pod, "metadata", "uid"));
    Log(flags_.node, "pod " + Field(pod, "metadata", "namespace") + "/" +
                         Field(pod, "metadata", "name") + " Running");
  }
}

void Standin::Sync() {
  std::set<std::string> live;  // uids of pods that should keep their volumes
  for (const ObjectPtr& pod : pods_->store().List()) {
    const std::string uid = Field(*pod, "metadata", "uid");
    const bool deleting =
        pod->contains("metadata") && (*pod)["metadata"].contains("deletionTimestamp");
    if (deleting) {
      // Containers stopped: unmount, then remove the pod for good.
      std::vector<Mount> of_pod;
      for (const auto& [key, m] : mounts_) {
        if (m.pod_uid == uid) of_pod.push_back(m);
      }
      for (const Mount& m : of_pod)
        Unmount(m);
      bool left = false;
      for (const auto& [key, m] : mounts_)
        left = left || m.pod_uid == uid;
      if (left) continue;
      std::error_code ignored;
      fs::remove_all(flags_.root + "/pods/" + uid, ignored);
      ephemera::apiclient::DeleteOptions options;
      options.precondition_uid = uid;
      options.grace_period_seconds = 0;
      Status s = client_->Delete(resources::kPods, Field(*pod, "metadata", "namespace"),
                                 Field(*pod, "metadata", "name"), options);
      (void)s;  // gone already, or the next sync tries again
      reported_.erase(uid);
      continue;
    }
    live.insert(uid);
    if (MountPod(*pod) && reported_.count(uid) == 0) ReportRunning(*pod);
  }
  // Pods that vanished without us (force-deleted): their volumes go too.
  std::vector<Mount> orphans;
  for (const auto& [key, m] : mounts_) {
    if (live.count(m.pod_uid) == 0) orphans.push_back(m);
  }
  for (const Mount& m : orphans)
    Unmount(m);
  ExpandVolumes();
}

void Standin::ExpandVolumes() {
  std::set<std::string> seen;  // one expansion per staged volume, through its first publication
  const auto now = std::chrono::steady_clock::now();
  for (const auto& [key, m] : mounts_) {
    if (m.claim.empty() || !seen.insert(m.staging).second) continue;
    Backoff& backoff = expand_backoff_[m.staging];
    if (now < backoff.next) continue;
    if (Expand(m)) {
      expand_backoff_.erase(m.staging);
    } else {
      backoff.delay =
          std::min(std::chrono::seconds(32), std::max(std::chrono::seconds(1), backoff.delay * 2));
      backoff.next = now + backoff.delay;
    }
  }
}

bool Standin::Expand(const Mount& m) {
  auto pvc = client_->Get(resources::kPersistentVolumeClaims, m.claim_ns, m.claim);
  auto pv = client_->Get(resources::kPersistentVolumes, "", m.pv);
  if (!pvc.ok() || !pv.ok()) return true;  // gone: the pod's teardown follows
  const Object& claim = **pvc;
  auto pv_size = ephemera::ParseQuantity(Field(**pv, "spec", "capacity", "storage"));
  auto status_size = ephemera::ParseQuantity(Field(claim, "status", "capacity", "storage"));
  if (!pv_size.ok() || !status_size.ok() || *pv_size <= *status_size) return true;
  // kubelet's runPreCheck: only a claim that csi-resizer handed to the node.
  const std::string resize_status = Field(claim, "status", "allocatedResourceStatuses", "storage");
  if (resize_status != "NodeResizePending" && resize_status != "NodeResizeInProgress") return true;
  const std::string allocated = Field(claim, "status", "allocatedResources", "storage");
  auto new_size = ephemera::ParseQuantity(allocated);
  if (!new_size.ok()) return true;

  Object updated = claim;
  if (resize_status == "NodeResizePending") {
    updated["status"]["allocatedResourceStatuses"]["storage"] = "NodeResizeInProgress";
    auto marked = client_->UpdateStatus(resources::kPersistentVolumeClaims, m.claim_ns, updated);
    if (!marked.ok()) return false;  // a conflict: the next round reads the claim again
    updated = **marked;
  }
  csi::v1::NodeExpandVolumeRequest expand;
  expand.set_volume_id(m.volume_id);
  expand.set_volume_path(m.target);
  expand.set_staging_target_path(m.staging);
  expand.mutable_capacity_range()->set_required_bytes(*new_size);
  MountCapability(m.fs_type, expand.mutable_volume_capability());
  csi::v1::NodeExpandVolumeResponse expanded;
  grpc::Status s =
      Rpc([&](grpc::ClientContext* c) { return node_->NodeExpandVolume(c, expand, &expanded); });
  if (s.ok()) {
    Object conditions = Object::array();  // the claim's conditions that are not about resizing
    if (updated["status"].contains("conditions")) {
      for (const auto& condition : updated["status"]["conditions"]) {
        const std::string type = Field(condition, "type");
        if (type != "FileSystemResizePending" && type != "Resizing" &&
            type != "ControllerResizeError" && type != "NodeResizeError") {
          conditions.push_back(condition);
        }
      }
    }
    // MarkNodeExpansionFinishedWithRecovery.
    updated["status"]["capacity"]["storage"] = allocated;
    updated["status"]["allocatedResourceStatuses"].erase("storage");
    if (updated["status"]["allocatedResourceStatuses"].empty()) {
      updated["status"].erase("allocatedResourceStatuses");
    }
    updated["status"]["conditions"] = conditions;
    auto done = client_->UpdateStatus(resources::kPersistentVolumeClaims, m.claim_ns, updated);
    Log(flags_.node, "PVC " + m.claim_ns + "/" + m.claim + " expanded to " + allocated +
                         " (NodeExpandVolume: " + std::to_string(expanded.capacity_bytes()) +
                         " bytes)" + (done.ok() ? "" : "; status: " + done.status().ToString()));
    return done.ok();
  }
  Log(flags_.node, "NodeExpandVolume " + m.volume_id + " for PVC " + m.claim_ns + "/" + m.claim +
                       ": " + s.error_message());
  const auto code = s.error_code();
  // Not final (kubelet's isFinalError): the operation may still be running; retry later.
  if (code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
      code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
      code == grpc::StatusCode::ABORTED) {
    return false;
  }
  const bool infeasible = code == grpc::StatusCode::INVALID_ARGUMENT ||
                          code == grpc::StatusCode::OUT_OF_RANGE ||
                          code == grpc::StatusCode::NOT_FOUND;
  std::string message = "failed to expand pvc with Expander.NodeExpand failed to expand the volume";
  message += infeasible ? " " : " : ";
  message += GrpcErrorText(s);
  const auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  gmtime_r(&t, &utc);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &utc);
  // Keep the other resize conditions (keepOldResizeConditions), replace NodeResizeError.
  Object merged = Object::array();
  if (updated["status"].contains("conditions")) {
    for (const auto& condition : updated["status"]["conditions"]) {
      if (Field(condition, "type") != "NodeResizeError") merged.push_back(condition);
    }
  }
  merged.push_back({{"type", "NodeResizeError"},
                    {"status", "True"},
                    {"lastTransitionTime", stamp},
                    {"message", message}});
  updated["status"]["conditions"] = merged;
  if (infeasible)
    updated["status"]["allocatedResourceStatuses"]["storage"] = "NodeResizeInfeasible";
  auto marked = client_->UpdateStatus(resources::kPersistentVolumeClaims, m.claim_ns, updated);
  if (!marked.ok()) Log(flags_.node, "PVC status: " + marked.status().ToString());
  return false;
}

void Standin::Run() {
  ephemera::apiclient::InformerOptions options;
  options.resource = resources::kPods;
  options.field_selector = "spec.nodeName=" + flags_.node;
  options.ns = flags_.ns;
  options.transform = ephemera::apiclient::DropManagedFields;
  pods_ = std::make_unique<ephemera::apiclient::Informer>(client_, options);
  auto poke = [this] {
    std::lock_guard<std::mutex> lock(mu_);
    dirty_ = true;
    cv_.notify_one();
  };
  pods_->AddHandlers({[poke](const ObjectPtr&) { poke(); },
                      [poke](const ObjectPtr&, const ObjectPtr&) { poke(); },
                      [poke](const ObjectPtr&) { poke(); }});
  pods_->Start();
  pods_->WaitForSync(std::chrono::seconds(30));
  while (!g_stop) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::seconds(1), [this] { return dirty_ || g_stop; });
      dirty_ = false;
    }
    if (g_stop) break;
    Sync();
  }
  pods_->Stop();
}

int Usage() {
  std::cerr << "usage: ephemera-kubelet-standin --kubeconfig=PATH --node=NAME "
               "--csi-address=unix:///PATH --root=DIR [--pod-ip=IP] [--namespace=NS]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const std::string& name, std::string* out) {
      const std::string prefix = "--" + name + "=";
      if (arg.rfind(prefix, 0) != 0) return false;
      *out = arg.substr(prefix.size());
      return true;
    };
    if (!value("kubeconfig", &flags.kubeconfig) && !value("node", &flags.node) &&
        !value("csi-address", &flags.csi_address) && !value("root", &flags.root) &&
        !value("pod-ip", &flags.pod_ip) && !value("namespace", &flags.ns)) {
      std::cerr << "unknown argument " << arg << "\n";
      return Usage();
    }
  }
  if (flags.kubeconfig.empty() || flags.node.empty() || flags.csi_address.empty() ||
      flags.root.empty()) {
    return Usage();
  }
  std::signal(SIGTERM, [](int) { g_stop = true; });
  std::signal(SIGINT, [](int) { g_stop = true; });
  auto config = ephemera::apiclient::LoadConfig(flags.kubeconfig, "");
  if (!config.ok()) {
    std::cerr << config.status().ToString() << "\n";
    return 1;
  }
  auto client = ephemera::apiclient::RestClient::New(*config);
  if (!client.ok()) {
    std::cerr << client.status().ToString() << "\n";
    return 1;
  }
  auto channel = grpc::CreateChannel(flags.csi_address, grpc::InsecureChannelCredentials());
  Standin standin(flags, *client, channel);
  Status registered = standin.Register();
  for (int attempt = 0; !registered.ok() && attempt < 50 && !g_stop; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    registered = standin.Register();
  }
  if (!registered.ok()) {
    std::cerr << "register: " << registered.ToString() << "\n";
    return 1;
  }
  standin.Run();
  return 0;
}
