// Resource: which kind of Kubernetes object a request is about, and where it lives in the API.
//
// Thread safety: immutable values.
#pragma once

#include <string>
#include <string_view>

namespace ephemera::apiclient {

struct Resource {
  std::string group;    // "" for the core group
  std::string version;  // "v1"
  std::string plural;   // "persistentvolumeclaims"
  std::string kind;     // "PersistentVolumeClaim"
  bool namespaced = true;

  // "v1" or "storage.k8s.io/v1", as in an object's apiVersion.
  std::string ApiVersion() const;
  // The collection URL path; `ns` is ignored for cluster-scoped resources and "" means all
  // namespaces: /api/v1/namespaces/NS/pods, /api/v1/pods, /apis/storage.k8s.io/v1/csinodes.
  std::string CollectionPath(std::string_view ns) const;
  // The path of one object: CollectionPath(ns) + "/" + name.
  std::string ObjectPath(std::string_view ns, std::string_view name) const;
};

namespace resources {
extern const Resource kPods;
extern const Resource kPersistentVolumeClaims;
extern const Resource kPersistentVolumes;
extern const Resource kNodes;
extern const Resource kNamespaces;
extern const Resource kConfigMaps;
extern const Resource kSecrets;
extern const Resource kServiceAccounts;
extern const Resource kEvents;  // events.k8s.io/v1
extern const Resource kLeases;
extern const Resource kStorageClasses;
extern const Resource kCSINodes;
extern const Resource kCSIDrivers;
extern const Resource kCSIStorageCapacities;
extern const Resource kDeployments;
extern const Resource kReplicaSets;
extern const Resource kStatefulSets;
extern const Resource kDaemonSets;
}  // namespace resources

// Percent-encodes a value for a URL query (RFC 3986 unreserved characters are kept).
std::string QueryEscape(std::string_view value);

// True when `name` is a valid Kubernetes object name or namespace segment for a URL path: it must
// not be empty, ".", "..", or contain '/' or '%' (the API server refuses them; we refuse earlier
// so that a hostile name can never change which path a request goes to).
bool IsSafePathSegment(std::string_view name);

}  // namespace ephemera::apiclient
