#include "plugin/views.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <tuple>

#include "common/quantity.h"
#include "plugin/format.h"

namespace ephemera::plugin {
namespace {

using apiclient::Field;

// The member `key` of `object` when `object` is a JSON object and has it; else nullptr.
const Object* Member(const Object* object, const char* key) {
  if (object == nullptr || !object->is_object()) return nullptr;
  auto it = object->find(key);
  return it == object->end() ? nullptr : &*it;
}

std::optional<std::string> StringAt(const Object* object) {
  if (object == nullptr || !object->is_string()) return std::nullopt;
  return object->get<std::string>();
}

std::vector<std::string> StringList(const Object* object) {
  std::vector<std::string> out;
  if (object == nullptr || !object->is_array()) return out;
  for (const auto& v : *object) {
    if (v.is_string()) out.push_back(v.get<std::string>());
  }
  return out;
}

std::string Join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (const auto& item : items)
    out += (out.empty() ? "" : sep) + item;
  return out;
}

Object QuantityJson(const std::optional<std::string>& quantity) {
  return quantity ? Object(*quantity) : Object(nullptr);
}

Object BytesJson(const std::optional<std::string>& quantity) {
  if (!quantity) return nullptr;
  auto bytes = ParseQuantity(*quantity);
  return bytes.ok() ? Object(*bytes) : Object(nullptr);
}

std::string NodeCell(const CapacityRow& row) {
  if (row.all_nodes) return "<all nodes>";
  if (!row.nodes.empty()) return Join(row.nodes, ",");
  return row.segment;
}

}  // namespace

bool SelectorMatches(const Object* selector, const Object& labels) {
  if (selector == nullptr || !selector->is_object()) return false;
  auto label = [&](const std::string& key) -> std::optional<std::string> {
    return StringAt(Member(&labels, key.c_str()));
  };
  if (const Object* match = Member(selector, "matchLabels")) {
    if (!match->is_object()) return false;
    for (const auto& [key, value] : match->items()) {
      if (!value.is_string() || label(key) != value.get<std::string>()) return false;
    }
  }
  if (const Object* expressions = Member(selector, "matchExpressions")) {
    if (!expressions->is_array()) return false;
    for (const auto& e : *expressions) {
      const std::string key = Field(e, "key");
      const std::string op = Field(e, "operator");
      const std::vector<std::string> values = StringList(Member(&e, "values"));
      const auto have = label(key);
      const bool in = have && std::find(values.begin(), values.end(), *have) != values.end();
      if (op == "In") {
        if (!in) return false;
      } else if (op == "NotIn") {
        if (in) return false;
      } else if (op == "Exists") {
        if (!have) return false;
      } else if (op == "DoesNotExist") {
        if (have) return false;
      } else {
        return false;
      }
    }
  }
  return true;
}

std::string SelectorString(const Object* selector) {
  if (selector == nullptr || !selector->is_object()) return "<none>";
  std::vector<std::string> parts;
  if (const Object* match = Member(selector, "matchLabels"); match && match->is_object()) {
    for (const auto& [key, value] : match->items())
      parts.push_back(key + "=" + (value.is_string() ? value.get<std::string>() : "?"));
  }
  if (const Object* expressions = Member(selector, "matchExpressions");
      expressions && expressions->is_array()) {
    for (const auto& e : *expressions) {
      const std::string key = Field(e, "key");
      const std::string op = Field(e, "operator");
      const std::string values = "(" + Join(StringList(Member(&e, "values")), ",") + ")";
      std::string part = key;
      if (op == "In") {
        part += " in ";
        part += values;
      } else if (op == "NotIn") {
        part += " notin ";
        part += values;
      } else if (op == "Exists") {
        // the key alone
      } else if (op == "DoesNotExist") {
        part.insert(0, 1, '!');
      } else {
        part += ' ';
        part += op;
        part += ' ';
        part += values;
      }
      parts.push_back(std::move(part));
    }
  }
  return parts.empty() ? "<all>" : Join(parts, ",");
}

std::vector<CapacityRow> BuildCapacityRows(const std::vector<ObjectPtr>& capacities,
                                           const std::vector<ObjectPtr>& nodes) {
  std::vector<CapacityRow> rows;
  for (const auto& c : capacities) {
    if (!c || !c->is_object()) continue;
    CapacityRow row;
    row.ns = Field(*c, "metadata", "namespace");
    row.name = Field(*c, "metadata", "name");
    row.creation_timestamp = Field(*c, "metadata", "creationTimestamp");
    row.storage_class = Field(*c, "storageClassName");
    row.capacity = StringAt(Member(c.get(), "capacity"));
    row.maximum_volume_size = StringAt(Member(c.get(), "maximumVolumeSize"));
    const Object* topology = Member(c.get(), "nodeTopology");
    if (topology != nullptr && topology->is_null()) topology = nullptr;
    row.segment = SelectorString(topology);
    // As the controller's DescribeSegment: its objects have matchLabels only.
    const Object* match = Member(topology, "matchLabels");
    if (match != nullptr && match->is_object()) {
      for (const auto& [k, v] : match->items()) {
        if (!row.controller_segment.empty()) row.controller_segment += ',';
        row.controller_segment += k + "=" + (v.is_string() ? v.get<std::string>() : "");
      }
    }
    if (row.controller_segment.empty()) row.controller_segment = "<all nodes>";
    const bool empty_selector = topology != nullptr && topology->is_object() &&
                                Member(topology, "matchLabels") == nullptr &&
                                Member(topology, "matchExpressions") == nullptr;
    if (empty_selector) {
      row.all_nodes = true;
    } else {
      static const Object kNoLabels = Object::object();
      for (const auto& n : nodes) {
        if (!n || !n->is_object()) continue;
        const Object* labels = Member(Member(n.get(), "metadata"), "labels");
        if (SelectorMatches(topology, labels ? *labels : kNoLabels)) {
          row.nodes.push_back(Field(*n, "metadata", "name"));
        }
      }
      std::sort(row.nodes.begin(), row.nodes.end());
    }
    rows.push_back(std::move(row));
  }
  std::sort(rows.begin(), rows.end(), [](const CapacityRow& a, const CapacityRow& b) {
    return std::make_tuple(NodeCell(a), a.storage_class, a.ns, a.name) <
           std::make_tuple(NodeCell(b), b.storage_class, b.ns, b.name);
  });
  return rows;
}

namespace {

std::optional<double> ConfirmedAge(const std::optional<double>& confirmed,
                                   std::chrono::system_clock::time_point now) {
  if (!confirmed) return std::nullopt;
  const double age = std::chrono::duration<double>(now.time_since_epoch()).count() - *confirmed;
  return std::max(0.0, age);  // clocks of two machines: never "in the future"
}

std::string ConfirmedCell(const std::optional<double>& confirmed,
                          std::chrono::system_clock::time_point now) {
  auto age = ConfirmedAge(confirmed, now);
  if (!age) return "<unknown>";
  return FormatAge(std::chrono::seconds(static_cast<int64_t>(*age))) + " ago";
}

// A label value of the Prometheus text format, from just after its opening quote; advances
// `at` past the closing quote. nullopt when it does not end.
std::optional<std::string> LabelValue(const std::string& text, size_t* at) {
  std::string out;
  for (size_t i = *at; i < text.size(); ++i) {
    const char ch = text[i];
    if (ch == '"') {
      *at = i + 1;
      return out;
    }
    if (ch == '\\' && i + 1 < text.size()) {
      const char next = text[++i];
      out += next == 'n' ? '\n' : next;
      continue;
    }
    out += ch;
  }
  return std::nullopt;
}

}  // namespace

std::vector<std::pair<std::pair<std::string, std::string>, double>> ParseConfirmations(
    const std::string& text) {
  static const std::string kName = "csistoragecapacity_confirmed_timestamp_seconds{";
  std::vector<std::pair<std::pair<std::string, std::string>, double>> out;
  size_t line_start = 0;
  while (line_start < text.size()) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos) line_end = text.size();
    const std::string line = text.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    if (line.rfind(kName, 0) != 0) continue;
    std::map<std::string, std::string> labels;
    size_t at = kName.size();
    bool ok = true;
    while (ok && at < line.size() && line[at] != '}') {
      const size_t eq = line.find("=\"", at);
      if (eq == std::string::npos) {
        ok = false;
        break;
      }
      const std::string key = line.substr(at, eq - at);
      at = eq + 2;
      auto value = LabelValue(line, &at);
      if (!value) {
        ok = false;
        break;
      }
      labels[key] = *value;
      if (at < line.size() && line[at] == ',') ++at;
    }
    if (!ok || at >= line.size() || labels.count("segment") == 0 ||
        labels.count("storage_class") == 0) {
      continue;
    }
    const std::string number = line.substr(at + 1);
    char* end = nullptr;
    const double value = std::strtod(number.c_str(), &end);
    if (end == number.c_str() || !std::isfinite(value)) continue;
    out.push_back({{labels["segment"], labels["storage_class"]}, value});
  }
  return out;
}

int MetricsPort(const Object& pod) {
  const Object* spec = Member(&pod, "spec");
  const Object* containers = Member(spec, "containers");
  if (containers != nullptr && containers->is_array()) {
    for (const auto& c : *containers) {
      const Object* ports = Member(&c, "ports");
      if (ports == nullptr || !ports->is_array()) continue;
      for (const auto& p : *ports) {
        const Object* number = Member(&p, "containerPort");
        if (Field(p, "name") == "metrics" && number != nullptr && number->is_number_integer()) {
          const auto port = number->get<int64_t>();
          if (port > 0 && port < 65536) return static_cast<int>(port);
        }
      }
    }
  }
  return 8080;
}

std::string CapacityTable(const std::vector<CapacityRow>& rows,
                          std::chrono::system_clock::time_point now) {
  std::vector<std::vector<std::string>> cells;
  cells.reserve(rows.size());
  for (const auto& row : rows) {
    cells.push_back({NodeCell(row), row.storage_class.empty() ? "<none>" : row.storage_class,
                     FormatQuantityCell(row.capacity), FormatQuantityCell(row.maximum_volume_size),
                     ConfirmedCell(row.confirmed, now)});
  }
  return FormatTable({"NODE", "STORAGECLASS", "CAPACITY", "MAXIMUM VOLUME SIZE", "CONFIRMED"},
                     cells);
}

Object CapacityJson(const std::vector<CapacityRow>& rows) {
  Object items = Object::array();
  for (const auto& row : rows) {
    Object nodes = Object::array();
    for (const auto& n : row.nodes)
      nodes.push_back(n);
    items.push_back(
        {{"namespace", row.ns},
         {"name", row.name},
         {"nodes", nodes},
         {"allNodes", row.all_nodes},
         {"segment", row.segment},
         {"storageClassName", row.storage_class},
         {"capacity", QuantityJson(row.capacity)},
         {"capacityBytes", BytesJson(row.capacity)},
         {"maximumVolumeSize", QuantityJson(row.maximum_volume_size)},
         {"maximumVolumeSizeBytes", BytesJson(row.maximum_volume_size)},
         {"confirmedTimestampSeconds", row.confirmed ? Object(*row.confirmed) : Object(nullptr)},
         {"creationTimestamp", row.creation_timestamp}});
  }
  return {{"kind", "CapacityList"}, {"items", items}};
}

std::vector<VolumeRow> BuildVolumeRows(const std::vector<ObjectPtr>& pods,
                                       const std::vector<ObjectPtr>& pvcs,
                                       const std::optional<std::vector<ObjectPtr>>& storage_classes,
                                       const std::string& driver) {
  std::map<std::pair<std::string, std::string>, const Object*> claims;
  for (const auto& p : pvcs) {
    if (p && p->is_object()) {
      claims[{Field(*p, "metadata", "namespace"), Field(*p, "metadata", "name")}] = p.get();
    }
  }
  std::map<std::string, std::string> provisioners;
  std::string default_class;
  if (storage_classes) {
    for (const auto& sc : *storage_classes) {
      if (!sc || !sc->is_object()) continue;
      const std::string name = Field(*sc, "metadata", "name");
      provisioners[name] = Field(*sc, "provisioner");
      if (Field(*sc, "metadata", "annotations", "storageclass.kubernetes.io/is-default-class") ==
          "true") {
        default_class = name;
      }
    }
  }

  std::vector<const Object*> sorted;
  for (const auto& p : pods) {
    if (p && p->is_object()) sorted.push_back(p.get());
  }
  std::sort(sorted.begin(), sorted.end(), [](const Object* a, const Object* b) {
    return std::make_pair(Field(*a, "metadata", "namespace"), Field(*a, "metadata", "name")) <
           std::make_pair(Field(*b, "metadata", "namespace"), Field(*b, "metadata", "name"));
  });

  std::vector<VolumeRow> rows;
  for (const Object* pod : sorted) {
    const std::string ns = Field(*pod, "metadata", "namespace");
    const std::string name = Field(*pod, "metadata", "name");
    const std::string uid = Field(*pod, "metadata", "uid");
    const std::string node = Field(*pod, "spec", "nodeName");
    const Object* volumes = Member(Member(pod, "spec"), "volumes");
    if (volumes == nullptr || !volumes->is_array()) continue;
    for (const auto& v : *volumes) {
      const std::string volume = Field(v, "name");
      if (volume.empty()) continue;
      if (const Object* ephemeral = Member(&v, "ephemeral"); ephemeral && ephemeral->is_object()) {
        VolumeRow row{.ns = ns, .pod = name, .volume = volume, .type = "ephemeral"};
        row.pvc = name;
        row.pvc += '-';
        row.pvc += volume;
        row.node = node;
        const Object* spec = Member(Member(ephemeral, "volumeClaimTemplate"), "spec");
        std::string storage_class = StringAt(Member(spec, "storageClassName")).value_or("");
        row.size = StringAt(Member(Member(Member(spec, "resources"), "requests"), "storage"));
        auto claim = claims.find({ns, row.pvc});
        if (claim == claims.end()) {
          row.phase = "Missing";
        } else {
          const Object& pvc = *claim->second;
          bool owned = false;
          if (const Object* refs = Member(Member(&pvc, "metadata"), "ownerReferences");
              refs && refs->is_array()) {
            for (const auto& ref : *refs) {
              const Object* controller = Member(&ref, "controller");
              if (Field(ref, "uid") == uid && !uid.empty() && controller &&
                  controller->is_boolean() && controller->get<bool>()) {
                owned = true;
              }
            }
          }
          if (!owned) {
            row.phase = "NotOwned";
          } else {
            row.phase = Field(pvc, "status", "phase");
            if (row.phase.empty()) row.phase = "Pending";
            if (auto sc = StringAt(Member(Member(&pvc, "spec"), "storageClassName"))) {
              storage_class = *sc;
            }
            if (auto cap =
                    StringAt(Member(Member(Member(&pvc, "status"), "capacity"), "storage"))) {
              row.size = cap;
            } else if (auto req = StringAt(
                           Member(Member(Member(Member(&pvc, "spec"), "resources"), "requests"),
                                  "storage"))) {
              row.size = req;
            }
            if (row.node.empty()) {
              row.node =
                  Field(pvc, "metadata", "annotations", "volume.kubernetes.io/selected-node");
            }
          }
        }
        if (storage_classes) {
          if (storage_class.empty()) storage_class = default_class;
          auto it = provisioners.find(storage_class);
          if (it == provisioners.end() || it->second != driver) continue;
        }
        rows.push_back(std::move(row));
      } else if (const Object* csi = Member(&v, "csi"); csi && csi->is_object()) {
        if (Field(*csi, "driver") != driver) continue;
        VolumeRow row{.ns = ns, .pod = name, .volume = volume, .type = "csi-inline"};
        row.phase = Field(*pod, "status", "phase");
        if (row.phase.empty()) row.phase = "Pending";
        row.node = node;
        row.size = StringAt(Member(Member(csi, "volumeAttributes"), "size"));
        rows.push_back(std::move(row));
      }
    }
  }
  return rows;
}

std::string VolumeTable(const std::vector<VolumeRow>& rows, bool with_namespace) {
  std::vector<std::string> header = {"POD", "VOLUME", "PVC", "PHASE", "NODE", "SIZE"};
  if (with_namespace) header.insert(header.begin(), "NAMESPACE");
  std::vector<std::vector<std::string>> cells;
  cells.reserve(rows.size());
  for (const auto& row : rows) {
    std::vector<std::string> line = {row.pod,
                                     row.volume,
                                     row.pvc.empty() ? "<inline>" : row.pvc,
                                     row.phase,
                                     row.node.empty() ? "<none>" : row.node,
                                     FormatQuantityCell(row.size)};
    if (with_namespace) line.insert(line.begin(), row.ns);
    cells.push_back(std::move(line));
  }
  return FormatTable(header, cells);
}

Object VolumeJson(const std::vector<VolumeRow>& rows) {
  Object items = Object::array();
  for (const auto& row : rows) {
    items.push_back({{"namespace", row.ns},
                     {"pod", row.pod},
                     {"volume", row.volume},
                     {"type", row.type},
                     {"pvc", row.pvc.empty() ? Object(nullptr) : Object(row.pvc)},
                     {"phase", row.phase},
                     {"node", row.node.empty() ? Object(nullptr) : Object(row.node)},
                     {"size", QuantityJson(row.size)},
                     {"sizeBytes", BytesJson(row.size)}});
  }
  return {{"kind", "VolumeList"}, {"items", items}};
}

}  // namespace ephemera::plugin
