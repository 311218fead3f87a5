// Unit tests of the ephemeral-volume controller against an API server in memory (MemoryApi):
// the controller runs as the Manager runs it (Start, workers, informers with watches), and the
// tests look at what it wrote.
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include "apiclient/errors.h"
#include "apiclient/events.h"
#include "controllers/ephemeral/controller.h"
#include "tests/unit/memory_api.h"

namespace ephemera::controllers {
namespace {

using apiclient::Field;
using apiclient::Object;
using apiclient::resources::kEvents;
using apiclient::resources::kPersistentVolumeClaims;
using apiclient::resources::kPods;
using testing::MemoryApi;

bool Eventually(const std::function<bool()>& condition,
                std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

Object EphemeralVolume(const std::string& name, const std::string& size) {
  return {{"name", name},
          {"ephemeral",
           {{"volumeClaimTemplate",
             {{"metadata", {{"labels", {{"app", "db"}}}, {"annotations", {{"note", "x"}}}}},
              {"spec",
               {{"accessModes", {"ReadWriteOnce"}},
                {"storageClassName", "ephemera-pmem-ext4"},
                {"resources", {{"requests", {{"storage", size}}}}}}}}}}}};
}

Object Pod(const std::string& name, Object volumes) {
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata", {{"name", name}, {"namespace", "ns"}, {"uid", "uid-pod-" + name}}},
          {"spec", {{"volumes", std::move(volumes)}}}};
}

struct Fixture {
  std::shared_ptr<MemoryApi> api = std::make_shared<MemoryApi>();
  apiclient::MetricsRegistry metrics;
  std::shared_ptr<apiclient::EventRecorder> events =
      std::make_shared<apiclient::EventRecorder>(api, apiclient::EventSource{"test", "test"});
  std::unique_ptr<EphemeralVolumeController> controller;

  void Start(bool release_terminated_pods = false,
             std::shared_ptr<ClaimAdmission> admission = nullptr) {
    controller = std::make_unique<EphemeralVolumeController>(
        api, events, metrics,
        EphemeralVolumeOptions{.workers = 2,
                               .release_terminated_pods = release_terminated_pods,
                               .admission = std::move(admission),
                               .admission_retry = std::chrono::seconds(2)});
    REQUIRE(controller->Start(std::stop_token{}).ok());
  }
  ~Fixture() {
    if (controller) controller->Stop();
  }
  apiclient::ObjectPtr Claim(const std::string& name) {
    auto c = api->Get(kPersistentVolumeClaims, "ns", name);
    return c.ok() ? *c : nullptr;
  }
  // The reasons of the Events written so far.
  std::vector<std::string> EventReasons() {
    events->Flush();
    std::vector<std::string> out;
    for (const auto& e : api->All(kEvents))
      out.push_back(Field(*e, "reason"));
    return out;
  }
};

TEST_CASE("Ephemeral volumes: one owned PVC per ephemeral volume, as the template says",
          "[unit][ephemeral]") {
  Fixture f;
  f.api->Put(kPods, Pod("web", {EphemeralVolume("scratch", "1Gi"),
                                EphemeralVolume("cache", "2Gi"),
                                {{"name", "config"}, {"configMap", {{"name", "c"}}}}}));
  f.Start();
  REQUIRE(Eventually([&] { return f.api->All(kPersistentVolumeClaims).size() == 2; }));
  const auto scratch = f.Claim("web-scratch");
  REQUIRE(scratch != nullptr);
  REQUIRE(f.Claim("web-cache") != nullptr);
  CHECK(f.Claim("web-config") == nullptr);
  const Object& ref = (*scratch)["metadata"]["ownerReferences"][0];
  CHECK(Field(ref, "kind") == "Pod");
  CHECK(Field(ref, "name") == "web");
  CHECK(Field(ref, "uid") == "uid-pod-web");
  CHECK(ref["controller"] == true);
  CHECK(ref["blockOwnerDeletion"] == true);
  CHECK(Field(*scratch, "metadata", "labels", "app") == "db");
  CHECK(Field(*scratch, "metadata", "annotations", "note") == "x");
  CHECK(Field(*scratch, "spec", "storageClassName") == "ephemera-pmem-ext4");
  CHECK((*scratch)["spec"]["resources"]["requests"]["storage"] == "1Gi");
  CHECK(Field(*f.Claim("web-cache"), "spec", "resources", "requests", "storage") == "2Gi");
  // Settled: nothing more is written (the two Events of the creates included; each is recorded
  // just after its create returns).
  CHECK(Eventually([&] {
    const auto reasons = f.EventReasons();
    return std::count(reasons.begin(), reasons.end(), "ProvisioningClaimCreated") == 2;
  }));
  const int writes = f.api->writes();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(f.api->writes() == writes);
}

// A ClaimAdmission that admits what `open` lets through and records what it was asked.
struct ScriptedAdmission : ClaimAdmission {
  std::mutex mu;
  std::function<bool(const std::string&)> open = [](const std::string&) { return false; };
  std::vector<std::string> asked;  // "claim class bytes"
  std::vector<std::string> abandoned;
  std::map<std::string, std::function<void()>> wakes;
  bool cancelled = false;
  bool Admit(const std::string& claim, const std::string& storage_class, int64_t bytes,
             std::function<void()> wake) override {
    std::lock_guard<std::mutex> lock(mu);
    asked.push_back(claim + " " + storage_class + " " + std::to_string(bytes));
    if (open(claim)) return true;
    wakes[claim] = std::move(wake);
    return false;
  }
  void Abandon(const std::string& claim) override {
    std::lock_guard<std::mutex> lock(mu);
    abandoned.push_back(claim);
  }
  void CancelWakes() override {
    std::lock_guard<std::mutex> lock(mu);
    cancelled = true;
    wakes.clear();
  }
  size_t Asked() {
    std::lock_guard<std::mutex> lock(mu);
    return asked.size();
  }
};

TEST_CASE("Ephemeral volumes: a claim not admitted (claim pacing) waits for its wake or the retry",
          "[unit][ephemeral]") {
  Fixture f;
  auto admission = std::make_shared<ScriptedAdmission>();
  Object no_class = EphemeralVolume("plain", "1Gi");
  no_class["ephemeral"]["volumeClaimTemplate"]["spec"].erase("storageClassName");
  f.api->Put(kPods, Pod("web", {EphemeralVolume("scratch", "1Gi")}));
  f.api->Put(kPods, Pod("other", {no_class}));
  f.Start(false, admission);
  // The claim with a class is asked for (its class, its bytes) and not made; the one without a
  // class is never paced.
  REQUIRE(Eventually([&] { return f.Claim("other-plain") != nullptr; }));
  REQUIRE(Eventually([&] { return admission->Asked() >= 1; }));
  {
    std::lock_guard<std::mutex> lock(admission->mu);
    CHECK(admission->asked.front() == "ns/web-scratch ephemera-pmem-ext4 1073741824");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(f.Claim("web-scratch") == nullptr);
  // Not woken: asked again after the retry (2 s here), still not admitted.
  CHECK(Eventually([&] { return admission->Asked() >= 2; }));
  CHECK(f.Claim("web-scratch") == nullptr);
  // Admitted, then woken: made at once (the next retry is 2 s away).
  std::function<void()> wake;
  {
    std::lock_guard<std::mutex> lock(admission->mu);
    admission->open = [](const std::string&) { return true; };
    wake = admission->wakes["ns/web-scratch"];
  }
  REQUIRE(wake);
  wake();
  CHECK(Eventually([&] { return f.Claim("web-scratch") != nullptr; },
                   std::chrono::milliseconds(250)));
  CHECK(f.metrics.Render().find("ephemeral_volume_controller_claims_paced_total") !=
        std::string::npos);
  f.controller->Stop();
  std::lock_guard<std::mutex> lock(admission->mu);
  CHECK(admission->cancelled);
  CHECK(admission->abandoned.empty());
}

Object Class(const std::string& name, const std::string& provisioner, const std::string& mode) {
  return {{"apiVersion", "storage.k8s.io/v1"},
          {"kind", "StorageClass"},
          {"metadata", {{"name", name}}},
          {"provisioner", provisioner},
          {"volumeBindingMode", mode}};
}

TEST_CASE("Ephemeral volumes: a claim of a late-binding external class names its provisioner",
          "[unit][ephemeral]") {
  const char* const ann = "volume.kubernetes.io/storage-provisioner";
  const char* const beta = "volume.beta.kubernetes.io/storage-provisioner";
  Fixture f;
  f.api->Put(apiclient::resources::kStorageClasses,
             Class("late", "pmem-csi.ephemera.io", "WaitForFirstConsumer"));
  f.api->Put(apiclient::resources::kStorageClasses,
             Class("now", "pmem-csi.ephemera.io", "Immediate"));
  f.api->Put(apiclient::resources::kStorageClasses,
             Class("in-tree", "kubernetes.io/aws-ebs", "WaitForFirstConsumer"));
  auto with_class = [](const std::string& volume, const std::string& storage_class) {
    Object v = EphemeralVolume(volume, "1Gi");
    v["ephemeral"]["volumeClaimTemplate"]["spec"]["storageClassName"] = storage_class;
    return v;
  };
  Object own = with_class("own", "late");
  own["ephemeral"]["volumeClaimTemplate"]["metadata"]["annotations"][ann] = "someone.else";
  Object no_class = EphemeralVolume("none", "1Gi");
  no_class["ephemeral"]["volumeClaimTemplate"]["spec"].erase("storageClassName");
  f.api->Put(kPods, Pod("web", {with_class("late", "late"), with_class("now", "now"),
                                with_class("tree", "in-tree"), with_class("gone", "missing"), own,
                                no_class}));
  f.Start();
  REQUIRE(Eventually([&] { return f.api->All(kPersistentVolumeClaims).size() == 6; }));
  const auto late = f.Claim("web-late");
  CHECK(Field(*late, "metadata", "annotations", ann) == "pmem-csi.ephemera.io");
  CHECK(Field(*late, "metadata", "annotations", beta) == "pmem-csi.ephemera.io");
  CHECK(Field(*late, "metadata", "annotations", "note") == "x");  // the template's stay
  // Immediate binding, an in-tree provisioner, a class not known, no class: left to the PV
  // controller, as without us.
  for (const char* name : {"web-now", "web-tree", "web-gone", "web-none"}) {
    INFO(name);
    CHECK(Field(*f.Claim(name), "metadata", "annotations", ann).empty());
    CHECK(Field(*f.Claim(name), "metadata", "annotations", beta).empty());
  }
  // The template's own value is kept, and no beta one is added beside it.
  CHECK(Field(*f.Claim("web-own"), "metadata", "annotations", ann) == "someone.else");
  CHECK(Field(*f.Claim("web-own"), "metadata", "annotations", beta).empty());
}

TEST_CASE("Ephemeral volumes: --annotate-storage-provisioner=false leaves the annotation out",
          "[unit][ephemeral]") {
  Fixture f;
  f.api->Put(apiclient::resources::kStorageClasses,
             Class("ephemera-pmem-ext4", "pmem-csi.ephemera.io", "WaitForFirstConsumer"));
  f.api->Put(kPods, Pod("web", {EphemeralVolume("scratch", "1Gi")}));
  f.controller = std::make_unique<EphemeralVolumeController>(
      f.api, f.events, f.metrics,
      EphemeralVolumeOptions{.workers = 1, .annotate_storage_provisioner = false});
  REQUIRE(f.controller->Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] { return f.Claim("web-scratch") != nullptr; }));
  CHECK(Field(*f.Claim("web-scratch"), "metadata", "annotations",
              "volume.kubernetes.io/storage-provisioner")
            .empty());
  CHECK(Field(*f.Claim("web-scratch"), "metadata", "annotations", "note") == "x");
}

TEST_CASE("Ephemeral volumes: a PVC deleted while its pod lives is created again",
          "[unit][ephemeral]") {
  Fixture f;
  f.api->Put(kPods, Pod("web", {EphemeralVolume("scratch", "1Gi")}));
  f.Start();
  REQUIRE(Eventually([&] { return f.Claim("web-scratch") != nullptr; }));
  const std::string first_version = Field(*f.Claim("web-scratch"), "metadata", "resourceVersion");
  REQUIRE(f.api->Delete(kPersistentVolumeClaims, "ns", "web-scratch", {}).ok());
  REQUIRE(Eventually([&] {
    auto c = f.Claim("web-scratch");
    return c != nullptr && Field(*c, "metadata", "resourceVersion") != first_version;
  }));
}

TEST_CASE("Ephemeral volumes: a PVC of the name that the pod does not own is left alone",
          "[unit][ephemeral]") {
  Fixture f;
  Object foreign = {
      {"apiVersion", "v1"},
      {"kind", "PersistentVolumeClaim"},
      {"metadata",
       {{"name", "web-scratch"},
        {"namespace", "ns"},
        {"uid", "uid-foreign"},
        {"ownerReferences",
         {{{"kind", "Pod"}, {"name", "other"}, {"uid", "u2"}, {"controller", true}}}}}},
      {"spec", {{"storageClassName", "precious"}}}};
  f.api->Put(kPersistentVolumeClaims, foreign);
  f.api->Put(kPods, Pod("web", {EphemeralVolume("scratch", "1Gi")}));
  f.Start();
  REQUIRE(Eventually([&] {
    const auto reasons = f.EventReasons();
    return std::find(reasons.begin(), reasons.end(), "FailedBinding") != reasons.end();
  }));
  const auto claim = f.Claim("web-scratch");
  REQUIRE(claim != nullptr);
  CHECK(Field(*claim, "metadata", "uid") == "uid-foreign");
  CHECK(Field(*claim, "spec", "storageClassName") == "precious");
}

TEST_CASE("Ephemeral volumes: a pod being deleted gets no PVC", "[unit][ephemeral]") {
  Fixture f;
  Object pod = Pod("leaving", {EphemeralVolume("scratch", "1Gi")});
  pod["metadata"]["deletionTimestamp"] = "2026-11-27T10:00:00Z";
  f.api->Put(kPods, pod);
  f.api->Put(kPods, Pod("staying", {EphemeralVolume("scratch", "1Gi")}));
  f.Start();
  REQUIRE(Eventually([&] { return f.Claim("staying-scratch") != nullptr; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(f.Claim("leaving-scratch") == nullptr);
}

TEST_CASE("Ephemeral volumes: --release-terminated-pods deletes the PVCs of a finished pod",
          "[unit][ephemeral]") {
  Fixture f;
  f.api->Put(kPods, Pod("job", {EphemeralVolume("scratch", "1Gi")}));
  f.Start(/*release_terminated_pods=*/true);
  REQUIRE(Eventually([&] { return f.Claim("job-scratch") != nullptr; }));
  auto pod = f.api->Get(kPods, "ns", "job");
  REQUIRE(pod.ok());
  Object done = **pod;
  done["status"]["phase"] = "Succeeded";
  REQUIRE(f.api->UpdateStatus(kPods, "ns", done).ok());
  REQUIRE(Eventually([&] { return f.Claim("job-scratch") == nullptr; }));
  CHECK(Eventually([&] {  // recorded just after the delete returns
    const auto reasons = f.EventReasons();
    return std::find(reasons.begin(), reasons.end(), "ReleasedClaim") != reasons.end();
  }));
  // Not created again for the finished pod.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(f.Claim("job-scratch") == nullptr);
}

TEST_CASE("Ephemeral volumes: hostile pods do not stop the others", "[unit][ephemeral]") {
  Fixture f;
  // A volume list that is no list, a template that is no object, a name too long for a PVC.
  Object odd = Pod("odd", Object::array());
  odd["spec"]["volumes"] = "not a list";
  f.api->Put(kPods, odd);
  Object bad_template = Pod("bad", {{{"name", "x"}, {"ephemeral", {{"volumeClaimTemplate", 7}}}}});
  f.api->Put(kPods, bad_template);
  f.api->Put(kPods, Pod(std::string(250, 'p'), {EphemeralVolume("scratch", "1Gi")}));
  f.api->Put(kPods, Pod("fine", {EphemeralVolume("scratch", "1Gi")}));
  f.Start();
  REQUIRE(Eventually([&] { return f.Claim("fine-scratch") != nullptr; }));
}

}  // namespace
}  // namespace ephemera::controllers
