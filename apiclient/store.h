// Store: a thread-safe cache of objects keyed by "namespace/name" (or "name" for cluster-scoped
// objects), with named secondary indexes. The informer fills it; controllers read it.
//
// Objects are shared and immutable (ObjectPtr): readers may keep them as long as they like, and
// nobody changes them. A change replaces the pointer.
//
// Thread safety: every method is safe to call concurrently; readers do not block each other.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "apiclient/client.h"

namespace ephemera::apiclient {

// Computes the index values of an object, e.g. the claim names a pod refers to.
using IndexFunc = std::function<std::vector<std::string>(const Object&)>;
using Indexers = std::map<std::string, IndexFunc>;

class Store {
 public:
  explicit Store(Indexers indexers = {});

  // "namespace/name", or "name" without a namespace.
  static std::string KeyOf(const Object& object);

  // Inserts or replaces; returns the object it replaced (null if none).
  ObjectPtr Upsert(ObjectPtr object);
  // Removes by key; returns the removed object (null if none).
  ObjectPtr Remove(const std::string& key);
  // Makes the store hold exactly `objects`. Reports what changed, through the callbacks, before it
  // returns: added(new), updated(old, new) for every object present before and after, removed(old).
  void Replace(std::vector<ObjectPtr> objects, const std::function<void(const ObjectPtr&)>& added,
               const std::function<void(const ObjectPtr&, const ObjectPtr&)>& updated,
               const std::function<void(const ObjectPtr&)>& removed);

  ObjectPtr Get(const std::string& key) const;
  std::vector<ObjectPtr> List() const;
  std::vector<std::string> Keys() const;
  size_t Size() const;
  // Objects whose index `index_name` yields `value`. Empty for an unknown index.
  std::vector<ObjectPtr> ByIndex(const std::string& index_name, const std::string& value) const;

 private:
  void IndexLocked(const std::string& key, const ObjectPtr& object);
  void UnindexLocked(const std::string& key, const ObjectPtr& object);

  const Indexers indexers_;
  mutable std::shared_mutex mu_;
  std::unordered_map<std::string, ObjectPtr> items_;  // GUARDED_BY(mu_)
  // index name -> index value -> keys
  std::map<std::string, std::unordered_map<std::string, std::set<std::string>>>
      indexes_;  // GUARDED_BY(mu_)
};

}  // namespace ephemera::apiclient
