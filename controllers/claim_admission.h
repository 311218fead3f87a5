// Claim pacing: the seam between the ephemeral-volume controller, which creates the claims of
// pods, and the storage-capacity controller, which publishes the capacity that kube-scheduler
// places those claims against.
//
// Why: kube-scheduler does not schedule a pod before its claims exist, and then places the pods
// whose claims just appeared a millisecond or two apart, each against the same published
// CSIStorageCapacity objects: it does not subtract the claims it has just placed itself. The
// storage-capacity controller subtracts a placed claim (a reservation), but its write lands tens
// to hundreds of milliseconds later, after the whole batch was placed. So when many claims are
// created at once and space is short, a batch piles onto the roomiest node and some of it fails
// to provision there (RESOURCE_EXHAUSTED) and is rescheduled.
//
// A claim is admitted (may be created now) when the claims admitted before it that are not yet
// counted in the published capacity, plus this one, fit on the roomiest node of its class as
// published: then no placement of them can exceed a node. Otherwise it waits until enough of
// them are counted (their reservations written), or until they no longer count (placed and
// written, gone, or not placed within a hold time: a pod that cannot be scheduled for other
// reasons holds nobody up for longer). When space is plentiful nothing ever waits.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace ephemera::controllers {

class ClaimAdmission {
 public:
  virtual ~ClaimAdmission() = default;
  // May the claim `claim` ("namespace/name") of `storage_class`, asking `bytes`, be created now?
  // True also for a claim of a class that is not paced. When false, `wake` is called (once, from
  // any thread, never under a lock of the caller's) when it may be admitted; the caller should
  // also ask again after a while on its own.
  virtual bool Admit(const std::string& claim, const std::string& storage_class, int64_t bytes,
                     std::function<void()> wake) = 0;
  // The admitted claim was not created after all: it no longer counts.
  virtual void Abandon(const std::string& claim) = 0;
  // Drops every pending wake (the caller stops; its wakes must not be called any more).
  virtual void CancelWakes() = 0;
};

}  // namespace ephemera::controllers
