#include "apiclient/store.h"

#include <mutex>

namespace ephemera::apiclient {

Store::Store(Indexers indexers) : indexers_(std::move(indexers)) {}

std::string Store::KeyOf(const Object& object) {
  const std::string ns = Field(object, "metadata", "namespace");
  const std::string name = Field(object, "metadata", "name");
  return ns.empty() ? name : ns + "/" + name;
}

void Store::IndexLocked(const std::string& key, const ObjectPtr& object) {
  for (const auto& [index_name, func] : indexers_) {
    auto& index = indexes_[index_name];
    for (const auto& value : func(*object))
      index[value].insert(key);
  }
}

void Store::UnindexLocked(const std::string& key, const ObjectPtr& object) {
  for (const auto& [index_name, func] : indexers_) {
    auto& index = indexes_[index_name];
    for (const auto& value : func(*object)) {
      auto it = index.find(value);
      if (it == index.end()) continue;
      it->second.erase(key);
      if (it->second.empty()) index.erase(it);
    }
  }
}

ObjectPtr Store::Upsert(ObjectPtr object) {
  const std::string key = KeyOf(*object);
  std::unique_lock lock(mu_);
  ObjectPtr old;
  auto it = items_.find(key);
  if (it != items_.end()) {
    old = it->second;
    UnindexLocked(key, old);
    IndexLocked(key, object);
    it->second = std::move(object);
  } else {
    IndexLocked(key, object);
    items_.emplace(key, std::move(object));
  }
  return old;
}

ObjectPtr Store::Remove(const std::string& key) {
  std::unique_lock lock(mu_);
  auto it = items_.find(key);
  if (it == items_.end()) return nullptr;
  ObjectPtr old = std::move(it->second);
  items_.erase(it);
  UnindexLocked(key, old);
  return old;
}

void Store::Replace(std::vector<ObjectPtr> objects,
                    const std::function<void(const ObjectPtr&)>& added,
                    const std::function<void(const ObjectPtr&, const ObjectPtr&)>& updated,
                    const std::function<void(const ObjectPtr&)>& removed) {
  std::vector<ObjectPtr> was_added;
  std::vector<std::pair<ObjectPtr, ObjectPtr>> was_updated;
  std::vector<ObjectPtr> was_removed;
  {
    std::unique_lock lock(mu_);
    std::unordered_map<std::string, ObjectPtr> next;
    next.reserve(objects.size());
    for (auto& object : objects) {
      std::string key = KeyOf(*object);
      next[std::move(key)] = std::move(object);
    }
    for (const auto& [key, old] : items_) {
      if (next.find(key) == next.end()) was_removed.push_back(old);
    }
    for (const auto& [key, object] : next) {
      auto it = items_.find(key);
      if (it == items_.end()) {
        was_added.push_back(object);
      } else {
        was_updated.emplace_back(it->second, object);
      }
    }
    items_ = std::move(next);
    indexes_.clear();
    for (const auto& [key, object] : items_)
      IndexLocked(key, object);
  }
  // Callbacks run without the lock, so that they may read the store.
  for (const auto& object : was_removed)
    removed(object);
  for (const auto& object : was_added)
    added(object);
  for (const auto& [old, object] : was_updated)
    updated(old, object);
}

ObjectPtr Store::Get(const std::string& key) const {
  std::shared_lock lock(mu_);
  auto it = items_.find(key);
  return it == items_.end() ? nullptr : it->second;
}

std::vector<ObjectPtr> Store::List() const {
  std::shared_lock lock(mu_);
  std::vector<ObjectPtr> out;
  out.reserve(items_.size());
  for (const auto& [key, object] : items_)
    out.push_back(object);
  return out;
}

std::vector<std::string> Store::Keys() const {
  std::shared_lock lock(mu_);
  std::vector<std::string> out;
  out.reserve(items_.size());
  for (const auto& [key, object] : items_)
    out.push_back(key);
  return out;
}

size_t Store::Size() const {
  std::shared_lock lock(mu_);
  return items_.size();
}

std::vector<ObjectPtr> Store::ByIndex(const std::string& index_name,
                                      const std::string& value) const {
  std::shared_lock lock(mu_);
  std::vector<ObjectPtr> out;
  auto index = indexes_.find(index_name);
  if (index == indexes_.end()) return out;
  auto keys = index->second.find(value);
  if (keys == index->second.end()) return out;
  for (const auto& key : keys->second) {
    auto it = items_.find(key);
    if (it != items_.end()) out.push_back(it->second);
  }
  return out;
}

}  // namespace ephemera::apiclient
