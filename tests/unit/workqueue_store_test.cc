// Unit tests of the controller runtime's work queue and store.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "apiclient/store.h"
#include "apiclient/workqueue.h"

namespace ephemera::apiclient {
namespace {

using std::chrono::milliseconds;

ObjectPtr Pod(const std::string& ns, const std::string& name, const std::string& rv,
              const std::vector<std::string>& claims = {}) {
  Object pod = {{"metadata", {{"namespace", ns}, {"name", name}, {"resourceVersion", rv}}}};
  for (const auto& c : claims) {
    pod["spec"]["volumes"].push_back({{"persistentVolumeClaim", {{"claimName", c}}}});
  }
  return std::make_shared<const Object>(std::move(pod));
}

std::vector<std::string> ClaimIndex(const Object& pod) {
  std::vector<std::string> out;
  if (!pod.contains("spec")) return out;
  for (const auto& v : pod["spec"]["volumes"]) {
    out.push_back(Field(pod, "metadata", "namespace") + "/" +
                  v["persistentVolumeClaim"]["claimName"].get<std::string>());
  }
  return out;
}

TEST_CASE("store: keys / upsert / remove and an index kept in step", "[store]") {
  Store store({{"claims", ClaimIndex}});
  CHECK(Store::KeyOf(*Pod("ns", "a", "1")) == "ns/a");
  CHECK(Store::KeyOf(Object{{"metadata", {{"name", "node-1"}}}}) == "node-1");

  CHECK(store.Upsert(Pod("ns", "a", "1", {"x", "y"})) == nullptr);
  CHECK(store.Upsert(Pod("ns", "b", "1", {"y"})) == nullptr);
  CHECK(store.ByIndex("claims", "ns/y").size() == 2);
  CHECK(store.ByIndex("claims", "ns/x").size() == 1);

  auto old = store.Upsert(Pod("ns", "a", "2", {"z"}));
  REQUIRE(old != nullptr);
  CHECK(Field(*old, "metadata", "resourceVersion") == "1");
  CHECK(store.ByIndex("claims", "ns/x").empty());
  CHECK(store.ByIndex("claims", "ns/z").size() == 1);
  CHECK(store.ByIndex("claims", "ns/y").size() == 1);

  CHECK(store.Remove("ns/b") != nullptr);
  CHECK(store.Remove("ns/b") == nullptr);
  CHECK(store.ByIndex("claims", "ns/y").empty());
  CHECK(store.ByIndex("nope", "ns/y").empty());
  CHECK(store.Size() == 1);
}

TEST_CASE("store: Replace reports adds / updates and deletes", "[store]") {
  Store store({{"claims", ClaimIndex}});
  store.Upsert(Pod("ns", "keep", "1", {"c"}));
  store.Upsert(Pod("ns", "gone", "1", {"c"}));
  std::vector<std::string> added, updated, removed;
  store.Replace(
      {Pod("ns", "keep", "2"), Pod("ns", "new", "1", {"c"})},
      [&](const ObjectPtr& o) { added.push_back(Field(*o, "metadata", "name")); },
      [&](const ObjectPtr& old, const ObjectPtr& o) {
        updated.push_back(Field(*old, "metadata", "resourceVersion") + "->" +
                          Field(*o, "metadata", "resourceVersion"));
      },
      [&](const ObjectPtr& o) { removed.push_back(Field(*o, "metadata", "name")); });
  CHECK(added == std::vector<std::string>{"new"});
  CHECK(updated == std::vector<std::string>{"1->2"});
  CHECK(removed == std::vector<std::string>{"gone"});
  CHECK(store.Size() == 2);
  auto by_claim = store.ByIndex("claims", "ns/c");
  REQUIRE(by_claim.size() == 1);
  CHECK(Field(*by_claim[0], "metadata", "name") == "new");
}

TEST_CASE("workqueue: duplicates merge / a key is never in two workers", "[workqueue]") {
  WorkQueue q;
  q.Add("a");
  q.Add("a");
  q.Add("b");
  CHECK(q.Len() == 2);
  std::string key;
  REQUIRE(q.Get(&key));
  CHECK(key == "a");
  q.Add("a");  // While "a" is processed: queued again only after Done.
  CHECK(q.Len() == 1);
  REQUIRE(q.Get(&key));
  CHECK(key == "b");
  CHECK(q.Len() == 0);
  q.Done("a");
  CHECK(q.Len() == 1);
  REQUIRE(q.Get(&key));
  CHECK(key == "a");
  q.Done("a");
  q.Done("b");
  CHECK(q.Len() == 0);
}

TEST_CASE("workqueue: concurrent workers never share a key", "[workqueue]") {
  WorkQueue q;
  std::atomic<int> in_flight_a{0};
  std::atomic<bool> overlap{false};
  std::atomic<int> processed{0};
  std::vector<std::thread> workers;
  workers.reserve(4);
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&] {
      std::string key;
      while (q.Get(&key)) {
        if (key == "a" && in_flight_a.fetch_add(1) != 0) overlap = true;
        std::this_thread::sleep_for(milliseconds(1));
        if (key == "a") --in_flight_a;
        ++processed;
        q.Done(key);
      }
    });
  }
  for (int i = 0; i < 200; ++i) {
    q.Add("a");
    q.Add("k" + std::to_string(i % 10));
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  q.ShutDownDrain();
  for (auto& t : workers)
    t.join();
  CHECK_FALSE(overlap);
  CHECK(processed > 10);
}

TEST_CASE("workqueue: AddAfter delays / the earliest time of a key wins", "[workqueue]") {
  WorkQueue q;
  const auto start = std::chrono::steady_clock::now();
  q.AddAfter("late", milliseconds(300));
  q.AddAfter("x", milliseconds(500));
  q.AddAfter("x", milliseconds(100));  // earlier: replaces
  q.AddAfter("x", milliseconds(400));  // later: ignored
  std::string key;
  REQUIRE(q.Get(&key));
  CHECK(key == "x");
  const auto first = std::chrono::steady_clock::now() - start;
  CHECK(first >= milliseconds(100));
  CHECK(first < milliseconds(280));
  q.Done("x");
  REQUIRE(q.Get(&key));
  CHECK(key == "late");
  CHECK(std::chrono::steady_clock::now() - start >= milliseconds(300));
  q.Done("late");
  std::this_thread::sleep_for(milliseconds(450));
  CHECK(q.Len() == 0);  // The superseded 500 ms and the 400 ms adds never fire.
}

TEST_CASE("workqueue: per-item exponential backoff / Forget resets it", "[workqueue]") {
  WorkQueue q({.base_delay = milliseconds(20), .max_delay = milliseconds(1000), .qps = 0});
  std::string key;
  std::vector<milliseconds> waits;
  for (int i = 0; i < 4; ++i) {
    const auto start = std::chrono::steady_clock::now();
    q.AddRateLimited("k");
    REQUIRE(q.Get(&key));
    q.Done(key);
    waits.push_back(
        std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start));
  }
  CHECK(q.NumRequeues("k") == 4);
  // 20, 40, 80, 160 ms (+ scheduling slack).
  CHECK(waits[0] >= milliseconds(20));
  CHECK(waits[1] >= milliseconds(40));
  CHECK(waits[2] >= milliseconds(80));
  CHECK(waits[3] >= milliseconds(160));
  CHECK(waits[3] < milliseconds(400));
  q.Forget("k");
  CHECK(q.NumRequeues("k") == 0);
}

TEST_CASE("workqueue: the overall bucket limits retries of many keys", "[workqueue]") {
  // 10 qps with a burst of 2: the 4th..12th retries of distinct keys are spaced 100 ms apart.
  WorkQueue q(
      {.base_delay = milliseconds(1), .max_delay = milliseconds(10), .qps = 10, .burst = 2});
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 12; ++i)
    q.AddRateLimited("k" + std::to_string(i));
  std::string key;
  for (int i = 0; i < 12; ++i) {
    REQUIRE(q.Get(&key));
    q.Done(key);
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(elapsed >= milliseconds(900));
  CHECK(elapsed < milliseconds(2000));
}

TEST_CASE("workqueue: ShutDown wakes blocked workers / adds after it are ignored", "[workqueue]") {
  WorkQueue q;
  std::atomic<int> returned{0};
  std::vector<std::thread> workers;
  workers.reserve(3);
  for (int i = 0; i < 3; ++i) {
    workers.emplace_back([&] {
      std::string key;
      if (!q.Get(&key)) ++returned;
    });
  }
  std::this_thread::sleep_for(milliseconds(50));
  q.ShutDown();
  for (auto& t : workers)
    t.join();
  CHECK(returned == 3);
  q.Add("late");
  CHECK(q.Len() == 0);
}

TEST_CASE("workqueue: observer sees adds / depth / latency and retries", "[workqueue]") {
  int adds = 0;
  int retries = 0;
  size_t max_depth = 0;
  double latency = -1;
  double work = -1;
  WorkQueue q({.qps = 0}, SystemClock(),
              {.on_depth = [&](size_t d) { max_depth = std::max(max_depth, d); },
               .on_add = [&] { ++adds; },
               .on_retry = [&] { ++retries; },
               .on_queue_latency = [&](double s) { latency = s; },
               .on_work_duration = [&](double s) { work = s; }});
  q.Add("a");
  q.Add("b");
  std::string key;
  REQUIRE(q.Get(&key));
  std::this_thread::sleep_for(milliseconds(20));
  q.Done(key);
  q.AddRateLimited("c");
  CHECK(adds == 2);
  CHECK(retries == 1);
  CHECK(max_depth == 2);
  CHECK(latency >= 0);
  CHECK(work >= 0.02);
}

}  // namespace
}  // namespace ephemera::apiclient
