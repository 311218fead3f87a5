#include "apiclient/resource.h"

namespace ephemera::apiclient {

std::string Resource::ApiVersion() const {
  return group.empty() ? version : group + "/" + version;
}

std::string Resource::CollectionPath(std::string_view ns) const {
  std::string path = group.empty() ? "/api/" + version : "/apis/" + group + "/" + version;
  if (namespaced && !ns.empty()) {
    path += "/namespaces/";
    path += ns;
  }
  path += "/";
  path += plural;
  return path;
}

std::string Resource::ObjectPath(std::string_view ns, std::string_view name) const {
  std::string path = CollectionPath(ns);
  path += "/";
  path += name;
  return path;
}

namespace resources {
const Resource kPods{"", "v1", "pods", "Pod", true};
const Resource kPersistentVolumeClaims{"", "v1", "persistentvolumeclaims", "PersistentVolumeClaim",
                                       true};
const Resource kPersistentVolumes{"", "v1", "persistentvolumes", "PersistentVolume", false};
const Resource kNodes{"", "v1", "nodes", "Node", false};
const Resource kNamespaces{"", "v1", "namespaces", "Namespace", false};
const Resource kConfigMaps{"", "v1", "configmaps", "ConfigMap", true};
const Resource kSecrets{"", "v1", "secrets", "Secret", true};
const Resource kServiceAccounts{"", "v1", "serviceaccounts", "ServiceAccount", true};
const Resource kEvents{"events.k8s.io", "v1", "events", "Event", true};
const Resource kLeases{"coordination.k8s.io", "v1", "leases", "Lease", true};
const Resource kStorageClasses{"storage.k8s.io", "v1", "storageclasses", "StorageClass", false};
const Resource kCSINodes{"storage.k8s.io", "v1", "csinodes", "CSINode", false};
const Resource kCSIDrivers{"storage.k8s.io", "v1", "csidrivers", "CSIDriver", false};
const Resource kCSIStorageCapacities{"storage.k8s.io", "v1", "csistoragecapacities",
                                     "CSIStorageCapacity", true};
const Resource kDeployments{"apps", "v1", "deployments", "Deployment", true};
const Resource kReplicaSets{"apps", "v1", "replicasets", "ReplicaSet", true};
const Resource kStatefulSets{"apps", "v1", "statefulsets", "StatefulSet", true};
const Resource kDaemonSets{"apps", "v1", "daemonsets", "DaemonSet", true};
}  // namespace resources

std::string QueryEscape(std::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(value.size());
  for (unsigned char c : value) {
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~';
    if (unreserved) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

bool IsSafePathSegment(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 253) return false;
  for (char c : name) {
    if (c == '/' || c == '%' || c == '?' || c == '#' || static_cast<unsigned char>(c) < 0x21) {
      return false;
    }
  }
  return true;
}

}  // namespace ephemera::apiclient
