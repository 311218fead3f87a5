// MemoryApi: an API server in memory for unit tests of controllers: objects by resource,
// namespace and name, resourceVersions with conflicts on update, AlreadyExists on create, and
// watches that deliver every change after the resourceVersion they start from (a list's), so that
// informers work against it as against the real one. Label and field selectors are not applied.
// Every write is counted.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "apiclient/client.h"

namespace ephemera::testing {

class MemoryApi final : public apiclient::ApiClient {
 public:
  using Object = apiclient::Object;
  using ObjectPtr = apiclient::ObjectPtr;
  using Resource = apiclient::Resource;

  // Stores `o` as it is (a test's fixture), telling watchers.
  void Put(const Resource& r, Object o) {
    std::lock_guard<std::mutex> lock(mu_);
    StoreLocked(r, std::move(o), apiclient::WatchEvent::Type::kAdded);
  }
  std::vector<ObjectPtr> All(const Resource& r, const std::string& ns = "") {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<ObjectPtr> out;
    for (const auto& [key, o] : objects_) {
      if (std::get<0>(key) == r.plural && (ns.empty() || std::get<1>(key) == ns)) out.push_back(o);
    }
    return out;
  }
  int writes() {
    std::lock_guard<std::mutex> lock(mu_);
    return writes_;
  }

  StatusOr<ObjectPtr> Get(const Resource& r, const std::string& ns,
                          const std::string& name) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = objects_.find({r.plural, ns, name});
    if (it == objects_.end()) return Status::NotFound(r.plural + " \"" + name + "\" not found");
    return it->second;
  }
  StatusOr<apiclient::ListResult> List(const Resource& r, const std::string& ns,
                                       const apiclient::ListOptions&) override {
    apiclient::ListResult out;
    std::lock_guard<std::mutex> lock(mu_);  // the items and their version at one moment
    for (const auto& [key, o] : objects_) {
      if (std::get<0>(key) == r.plural && (ns.empty() || std::get<1>(key) == ns)) {
        out.items.push_back(std::make_shared<Object>(*o));
      }
    }
    out.resource_version = std::to_string(version_);
    return out;
  }
  StatusOr<ObjectPtr> Create(const Resource& r, const std::string& ns, const Object& o) override {
    std::lock_guard<std::mutex> lock(mu_);
    Object copy = o;
    std::string name = apiclient::Field(o, "metadata", "name");
    if (name.empty())
      name = apiclient::Field(o, "metadata", "generateName") + std::to_string(version_ + 1);
    if (objects_.count({r.plural, ns, name}) > 0) {
      return Status::AlreadyExists(r.plural + " \"" + name + "\" already exists");
    }
    copy["metadata"]["name"] = name;
    if (r.namespaced) copy["metadata"]["namespace"] = ns;
    copy["metadata"]["uid"] = "uid-" + r.plural + "-" + name;
    ++writes_;
    return StoreLocked(r, std::move(copy), apiclient::WatchEvent::Type::kAdded);
  }
  StatusOr<ObjectPtr> Update(const Resource& r, const std::string& ns, const Object& o) override {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string name = apiclient::Field(o, "metadata", "name");
    auto it = objects_.find({r.plural, ns, name});
    if (it == objects_.end()) return Status::NotFound(name);
    if (apiclient::Field(*it->second, "metadata", "resourceVersion") !=
        apiclient::Field(o, "metadata", "resourceVersion")) {
      return Status::Aborted("conflict");
    }
    ++writes_;
    return StoreLocked(r, o, apiclient::WatchEvent::Type::kModified);
  }
  StatusOr<ObjectPtr> UpdateStatus(const Resource& r, const std::string& ns,
                                   const Object& o) override {
    return Update(r, ns, o);
  }
  StatusOr<ObjectPtr> MergePatch(const Resource&, const std::string&, const std::string&,
                                 const Object&) override {
    return Status::Unimplemented("merge patch");
  }
  StatusOr<ObjectPtr> Apply(const Resource&, const std::string&, const Object&, const std::string&,
                            bool) override {
    return Status::Unimplemented("apply");
  }
  Status Delete(const Resource& r, const std::string& ns, const std::string& name,
                const apiclient::DeleteOptions& options) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = objects_.find({r.plural, ns, name});
    if (it == objects_.end()) return Status::NotFound(name);
    if (!options.precondition_uid.empty() &&
        apiclient::Field(*it->second, "metadata", "uid") != options.precondition_uid) {
      return Status::Aborted("uid precondition failed");
    }
    ObjectPtr gone = it->second;
    objects_.erase(it);
    ++writes_;
    ++version_;
    Publish(r.plural, ns, apiclient::WatchEvent::Type::kDeleted, gone);
    return Status::Ok();
  }
  StatusOr<apiclient::WatchStreamPtr> Watch(const Resource& r, const std::string& ns,
                                            const apiclient::WatchOptions& options) override {
    auto stream = std::make_shared<Stream>();
    std::lock_guard<std::mutex> lock(mu_);
    // What happened since the version the watch starts from (a list's): nothing falls between the
    // list and the watch.
    const int64_t from =
        options.resource_version.empty() ? version_ : std::stoll(options.resource_version);
    for (const auto& h : history_) {
      if (h.version > from && h.plural == r.plural && (ns.empty() || h.ns == ns)) {
        stream->events.push_back({h.type, std::make_shared<Object>(*h.object)});
      }
    }
    watchers_.push_back({r.plural, ns, stream});
    return apiclient::WatchStreamPtr(new StreamHandle(stream));
  }

 private:
  struct Stream {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<apiclient::WatchEvent> events;
    bool stopped = false;
  };
  class StreamHandle final : public apiclient::WatchStream {
   public:
    explicit StreamHandle(std::shared_ptr<Stream> s) : s_(std::move(s)) {}
    ~StreamHandle() override { Stop(); }
    bool Next(apiclient::WatchEvent* event, Status* error) override {
      std::unique_lock<std::mutex> lock(s_->mu);
      s_->cv.wait(lock, [this] { return s_->stopped || !s_->events.empty(); });
      if (s_->stopped) {
        *error = Status::Cancelled("stopped");
        return false;
      }
      *event = std::move(s_->events.front());
      s_->events.pop_front();
      return true;
    }
    void Stop() override {
      std::lock_guard<std::mutex> lock(s_->mu);
      s_->stopped = true;
      s_->cv.notify_all();
    }

   private:
    std::shared_ptr<Stream> s_;
  };
  struct Watcher {
    std::string plural, ns;
    std::weak_ptr<Stream> stream;
  };
  struct Change {
    int64_t version;
    std::string plural, ns;
    apiclient::WatchEvent::Type type;
    ObjectPtr object;
  };

  ObjectPtr StoreLocked(const Resource& r, Object o, apiclient::WatchEvent::Type type) {
    o["metadata"]["resourceVersion"] = std::to_string(++version_);
    const std::string ns = r.namespaced ? apiclient::Field(o, "metadata", "namespace") : "";
    auto stored = std::make_shared<const Object>(std::move(o));
    objects_[{r.plural, ns, apiclient::Field(*stored, "metadata", "name")}] = stored;
    Publish(r.plural, ns, type, stored);
    return stored;
  }
  void Publish(const std::string& plural, const std::string& ns, apiclient::WatchEvent::Type type,
               const ObjectPtr& o) {
    history_.push_back({version_, plural, ns, type, o});
    for (auto& w : watchers_) {
      auto s = w.stream.lock();
      if (!s || w.plural != plural || (!w.ns.empty() && w.ns != ns)) continue;
      std::lock_guard<std::mutex> lock(s->mu);
      s->events.push_back({type, std::make_shared<Object>(*o)});
      s->cv.notify_all();
    }
  }

  std::mutex mu_;
  std::map<std::tuple<std::string, std::string, std::string>, ObjectPtr> objects_;
  std::vector<Watcher> watchers_;
  std::vector<Change> history_;
  int64_t version_ = 0;
  int writes_ = 0;
};

}  // namespace ephemera::testing
