// What `kubectl ephemera capacity` and `kubectl ephemera volumes` show, computed from API objects
// that the caller listed: no I/O here, so every rule is unit-tested with plain JSON.
//
// Input objects come from the API server and are treated as hostile: a missing or mistyped field
// never throws, it shows as "<unknown>"/"<unset>" or the object is skipped.
//
// Thread safety: pure functions.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "apiclient/client.h"

namespace ephemera::plugin {

using apiclient::Object;
using apiclient::ObjectPtr;

// The label CSIStorageCapacity objects carry with the name of their driver.
inline constexpr const char* kDriverLabel = "csi.storage.k8s.io/drivername";
// The driver's name (csi/request_validation.h kDriverName): the default of --driver.
inline constexpr const char* kDefaultDriver = "pmem-csi.ephemera.io";
// The label selector of the controller-manager's pods (manifests/controller-manager.yaml).
inline constexpr const char* kControllerLabel =
    "app.kubernetes.io/name=ephemera-controller-manager";

// True when `labels` (a JSON map of strings) match a metav1.LabelSelector: every matchLabels pair
// and every matchExpressions entry (In, NotIn, Exists, DoesNotExist). A null or absent selector
// matches nothing (as for CSIStorageCapacity.nodeTopology); an empty one matches everything.
// An operator we do not know matches nothing.
bool SelectorMatches(const Object* selector, const Object& labels);

// A selector as text: "kubernetes.io/hostname=node-1,zone in (a,b)"; "<none>" for null.
std::string SelectorString(const Object* selector);

struct CapacityRow {
  std::string ns, name;
  std::vector<std::string> nodes;  // names of the Nodes that nodeTopology selects, sorted
  std::string segment;             // SelectorString(nodeTopology)
  bool all_nodes = false;          // an empty selector: every node
  std::string storage_class;
  std::optional<std::string> capacity;             // the quantities as the API has them
  std::optional<std::string> maximum_volume_size;  //
  std::string creation_timestamp;
  // The segment as the controller's metrics name it ("key=value,..." sorted, "<all nodes>").
  std::string controller_segment;
  // When the driver last confirmed the value (Unix seconds), from the controller's /metrics.
  std::optional<double> confirmed;
};

// The csistoragecapacity_confirmed_timestamp_seconds series of a Prometheus text page:
// (segment, storage_class) -> value. Lines that do not parse are skipped.
std::vector<std::pair<std::pair<std::string, std::string>, double>> ParseConfirmations(
    const std::string& text);

// The port of a controller-manager pod's container port named "metrics", else 8080.
int MetricsPort(const Object& pod);

// One row per CSIStorageCapacity object, sorted by node cell, storage class and name.
std::vector<CapacityRow> BuildCapacityRows(const std::vector<ObjectPtr>& capacities,
                                           const std::vector<ObjectPtr>& nodes);
// NODE, STORAGECLASS, CAPACITY, MAXIMUM VOLUME SIZE, CONFIRMED (how long ago the driver last
// confirmed the value; <unknown> without the controller's metrics). NODE is the node names, or
// the segment when no node matches it.
std::string CapacityTable(const std::vector<CapacityRow>& rows,
                          std::chrono::system_clock::time_point now);
// {"kind": "CapacityList", "items": [{namespace, name, nodes, segment, storageClassName,
// capacity, capacityBytes, maximumVolumeSize, maximumVolumeSizeBytes, creationTimestamp,
// confirmedTimestampSeconds (Unix time)}]}; absent quantities and unknown confirmations are
// null.
Object CapacityJson(const std::vector<CapacityRow>& rows);

struct VolumeRow {
  std::string ns, pod, volume;
  std::string type;   // "ephemeral" (generic ephemeral volume) or "csi-inline"
  std::string pvc;    // the claim's name; "" for inline volumes
  std::string phase;  // the PVC's phase, "Missing", "NotOwned"; inline: the pod's phase
  std::string node;   // the pod's node, else the PVC's selected-node; "" when neither
  std::optional<std::string> size;  // quantity: capacity, else request; inline: attribute size
};

// The volumes of `pods` that belong to `driver`:
//   - generic ephemeral volumes whose StorageClass (the PVC's, else the template's, else the
//     default class) has `driver` as provisioner; with `storage_classes` unset (the caller could
//     not list them) every generic ephemeral volume is shown. Their PVC is <pod>-<volume> in the
//     pod's namespace; one that the pod does not control shows phase "NotOwned".
//   - CSI inline volumes whose csi.driver is `driver`.
// Sorted by namespace, pod, then the order of the pod's volumes.
std::vector<VolumeRow> BuildVolumeRows(const std::vector<ObjectPtr>& pods,
                                       const std::vector<ObjectPtr>& pvcs,
                                       const std::optional<std::vector<ObjectPtr>>& storage_classes,
                                       const std::string& driver);
// [NAMESPACE,] POD, VOLUME, PVC, PHASE, NODE, SIZE.
std::string VolumeTable(const std::vector<VolumeRow>& rows, bool with_namespace);
// {"kind": "VolumeList", "items": [{namespace, pod, volume, type, pvc, phase, node, size,
// sizeBytes}]}; pvc, node and size are null when absent.
Object VolumeJson(const std::vector<VolumeRow>& rows);

}  // namespace ephemera::plugin
