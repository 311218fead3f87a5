// ApiClient: the seam between ephemera's controllers and the Kubernetes API server.
//
// Objects are JSON documents (nlohmann::json) handed around as shared, immutable values
// (ObjectPtr): the cache and every reader share one copy, and nobody mutates it. To change an
// object, copy it (`auto copy = *obj;`), edit the copy and send it.
//
// Every method returns a Status mapped from the HTTP result as apiclient/errors.h describes.
// Names and namespaces are checked (IsSafePathSegment) before they reach a URL.
//
// Thread safety: implementations are safe for concurrent use by many threads.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "apiclient/resource.h"
#include "common/status.h"

namespace ephemera::apiclient {

// ordered_json keeps an object's members in a vector, not a tree: Kubernetes objects have few keys
// per level, so lookups stay fast, and an informer of 10,000 pods needs much less memory.
using Object = nlohmann::ordered_json;
using ObjectPtr = std::shared_ptr<const Object>;
// A freshly decoded object that its receiver owns: lists and watches hand these out, so that an
// informer can move (not copy) an object into its transform when nobody else holds it.
using FreshObjectPtr = std::shared_ptr<Object>;

class FieldFilter;  // apiclient/field_filter.h

struct ListOptions {
  std::string label_selector;
  std::string field_selector;
  int64_t limit = 0;             // page size; 0: no paging
  std::string continue_token;    // from a previous page
  std::string resource_version;  // "" (most recent, from etcd) or "0" (any, from the cache)
  // Members of each item to decode (nullptr: all). Only a saving: a client may ignore it.
  std::shared_ptr<const FieldFilter> filter;
};

struct ListResult {
  std::vector<FreshObjectPtr> items;
  std::string resource_version;  // of the list, to start a watch from
  std::string continue_token;    // non-empty when there are more pages
};

struct WatchOptions {
  std::string label_selector;
  std::string field_selector;
  std::string resource_version;  // start after this version
  bool allow_bookmarks = true;
  int timeout_seconds = 300;  // the server ends the watch after this long
  // Members of each event's object to decode (nullptr: all). Only a saving: a client may ignore it.
  std::shared_ptr<const FieldFilter> filter;
};

struct WatchEvent {
  enum class Type { kAdded, kModified, kDeleted, kBookmark };
  Type type = Type::kAdded;
  FreshObjectPtr object;
};

std::string_view WatchEventTypeName(WatchEvent::Type type);

// One open watch. Next() blocks until an event arrives.
class WatchStream {
 public:
  virtual ~WatchStream() = default;
  // Returns true with the next event in *event. Returns false when the stream is over: *error is
  // OK when the server ended it normally (timeout), OUT_OF_RANGE when the resourceVersion is too
  // old (410 Gone: relist), CANCELLED after Stop(), otherwise what went wrong.
  virtual bool Next(WatchEvent* event, Status* error) = 0;
  // Ends the stream from any thread; a blocked Next() returns false.
  virtual void Stop() = 0;
};
using WatchStreamPtr = std::unique_ptr<WatchStream>;

struct DeleteOptions {
  std::string precondition_uid;               // only delete this incarnation of the object
  std::string precondition_resource_version;  // only delete this version
  std::string propagation_policy;             // "", "Background", "Foreground", "Orphan"
  int64_t grace_period_seconds = -1;          // -1: the object's default; 0: at once
};

class ApiClient {
 public:
  virtual ~ApiClient() = default;

  virtual StatusOr<ObjectPtr> Get(const Resource& resource, const std::string& ns,
                                  const std::string& name) = 0;
  // One page (options.limit) or everything (limit 0).
  virtual StatusOr<ListResult> List(const Resource& resource, const std::string& ns,
                                    const ListOptions& options) = 0;
  virtual StatusOr<ObjectPtr> Create(const Resource& resource, const std::string& ns,
                                     const Object& object) = 0;
  // Create for a caller that only needs to know whether it worked: the server's answer is not
  // decoded (a client may skip that work).
  virtual Status CreateOnly(const Resource& resource, const std::string& ns, const Object& object) {
    return Create(resource, ns, object).status();
  }
  // Replaces the object; metadata.resourceVersion makes it conditional (ABORTED on conflict).
  virtual StatusOr<ObjectPtr> Update(const Resource& resource, const std::string& ns,
                                     const Object& object) = 0;
  virtual StatusOr<ObjectPtr> UpdateStatus(const Resource& resource, const std::string& ns,
                                           const Object& object) = 0;
  // JSON merge patch (RFC 7386).
  virtual StatusOr<ObjectPtr> MergePatch(const Resource& resource, const std::string& ns,
                                         const std::string& name, const Object& patch) = 0;
  // Server-side apply of `object` as `field_manager`; force takes conflicting fields over.
  virtual StatusOr<ObjectPtr> Apply(const Resource& resource, const std::string& ns,
                                    const Object& object, const std::string& field_manager,
                                    bool force) = 0;
  virtual Status Delete(const Resource& resource, const std::string& ns, const std::string& name,
                        const DeleteOptions& options) = 0;
  virtual StatusOr<WatchStreamPtr> Watch(const Resource& resource, const std::string& ns,
                                         const WatchOptions& options) = 0;
};
using ApiClientPtr = std::shared_ptr<ApiClient>;

// Reads a string field at a JSON pointer-like path of an object ("" if absent or not a string),
// e.g. Field(obj, "metadata", "name").
template <typename... Keys>
std::string Field(const Object& object, const Keys&... keys) {
  const Object* cur = &object;
  for (const char* key : {static_cast<const char*>(keys)...}) {
    if (!cur->is_object()) return {};
    auto it = cur->find(key);
    if (it == cur->end()) return {};
    cur = &*it;
  }
  return cur->is_string() ? cur->get<std::string>() : std::string();
}

// Whether the field at that path is the JSON value true (false if absent or of another type).
template <typename... Keys>
bool BoolField(const Object& object, const Keys&... keys) {
  const Object* cur = &object;
  for (const char* key : {static_cast<const char*>(keys)...}) {
    if (!cur->is_object()) return false;
    auto it = cur->find(key);
    if (it == cur->end()) return false;
    cur = &*it;
  }
  return cur->is_boolean() && cur->get<bool>();
}

// The elements of the array at that path of an object (empty if absent or not an array).
template <typename... Keys>
const Object& ArrayField(const Object& object, const Keys&... keys) {
  static const Object kEmpty = Object::array();
  const Object* cur = &object;
  for (const char* key : {static_cast<const char*>(keys)...}) {
    if (!cur->is_object()) return kEmpty;
    auto it = cur->find(key);
    if (it == cur->end()) return kEmpty;
    cur = &*it;
  }
  return cur->is_array() ? *cur : kEmpty;
}

}  // namespace ephemera::apiclient
