// LibndctlPmemApi: PmemApi on libndctl, the library of the ndctl tool (linked through pkg-config).
//
// Every call first drops libndctl's cached view of the sysfs tree (ndctl_invalidate), so that
// changes made by others (the ndctl command, a reboot's auto-probing) are seen.
//
// Thread safety: none; DirectDeviceManager serializes all calls.
#pragma once

#include <memory>

#include "csi/backends/pmem_api.h"

struct ndctl_ctx;

namespace ephemera::csi {

class LibndctlPmemApi : public PmemApi {
 public:
  // Errors: INTERNAL when libndctl cannot be initialized.
  static StatusOr<std::unique_ptr<LibndctlPmemApi>> Open();
  ~LibndctlPmemApi() override;
  LibndctlPmemApi(const LibndctlPmemApi&) = delete;
  LibndctlPmemApi& operator=(const LibndctlPmemApi&) = delete;

  StatusOr<std::vector<PmemRegion>> Regions() override;
  StatusOr<std::vector<PmemNamespace>> Namespaces() override;
  StatusOr<PmemNamespace> CreateNamespace(const std::string& region, const std::string& alt_name,
                                          int64_t raw_size, PmemMode mode,
                                          int64_t fsdax_align) override;
  Status DestroyNamespace(const std::string& name) override;
  Status RenameNamespace(const std::string& name, const std::string& alt_name) override;

 private:
  explicit LibndctlPmemApi(ndctl_ctx* ctx) : ctx_(ctx) {}
  ndctl_ctx* ctx_;
};

}  // namespace ephemera::csi
