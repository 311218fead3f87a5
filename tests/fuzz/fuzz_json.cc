// Fuzz targets for the parsers of structured outside input: the driver's state records, LVM's JSON
// reports, watch-event lines and error bodies from the API server, exec credential plugins'
// output, kubeconfig files and the controller-manager's config file. The first byte selects the
// parser, the rest is the text. Every parser must answer with a value or an error, never crash,
// hang or throw; a state record that parses must survive a write and read unchanged.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "apiclient/config.h"
#include "apiclient/errors.h"
#include "apiclient/exec_credential.h"
#include "apiclient/field_filter.h"
#include "apiclient/rest_client.h"
#include "controllers/manager/options.h"
#include "csi/backends/lvm_device_manager.h"
#include "csi/state/state_store.h"

namespace {

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

// A config file needs a path: one per process, rewritten for each input.
const std::string& ConfigPath() {
  static const std::string path = "/tmp/ephemera-fuzz-config-" + std::to_string(getpid()) + ".yaml";
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ephemera;  // NOLINT(google-build-using-namespace)
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 8) {
    case 0: {
      auto record = csi::ParseRecord(text);
      if (record.ok()) {
        auto again = csi::ParseRecord(csi::SerializeRecord(*record));
        Check(again.ok() && *again == *record);
      }
      break;
    }
    case 1:
      (void)csi::ParseVgsReport(text);
      (void)csi::ParseLvsReport(text);
      break;
    case 2: {
      static const apiclient::FieldFilter envelope = {
          {"type", apiclient::FieldFilter()},
          {"object", apiclient::FieldFilter{{"metadata", apiclient::FieldFilter{
                                                             {"name", apiclient::FieldFilter()},
                                                             {"ownerReferences", apiclient::FieldFilter()}}},
                                            {"spec", apiclient::FieldFilter()}}}};
      for (const apiclient::FieldFilter* filter : {static_cast<const apiclient::FieldFilter*>(nullptr), &envelope}) {
        apiclient::WatchEvent event;
        Status error;
        if (!apiclient::DecodeWatchEventLine(text, filter, "watch", &event, &error)) {
          Check(!error.ok());
        } else {
          Check(event.object != nullptr && event.object->is_object());
        }
      }
      break;
    }
    case 3: {
      const int code = text.empty() ? 500 : 100 + static_cast<unsigned char>(text[0]) * 2;
      Check(!apiclient::StatusFromHttp(code, text, "request").ok() || code < 400);
      break;
    }
    case 4:
      (void)apiclient::ParseExecCredential(text, "client.authentication.k8s.io/v1");
      (void)apiclient::ParseExecCredential(text, "client.authentication.k8s.io/v1beta1");
      break;
    case 5: {
      static const apiclient::FieldFilter pods = {
          {"metadata", apiclient::FieldFilter{{"name", apiclient::FieldFilter()},
                                              {"uid", apiclient::FieldFilter()}}},
          {"spec", apiclient::FieldFilter{{"volumes", apiclient::FieldFilter()}}}};
      (void)apiclient::ParseFiltered(text, &pods);
      break;
    }
    case 6:
      // File references resolve below a directory that does not exist: nothing is read.
      (void)apiclient::ParseKubeconfig(text, "/nonexistent/ephemera-fuzz", "");
      break;
    default: {
      {
        std::ofstream out(ConfigPath(), std::ios::trunc | std::ios::binary);
        out << text;
      }
      controllers::ManagerOptions options;
      (void)controllers::ParseManagerOptions({"--config=" + ConfigPath()}, &options);
      break;
    }
  }
  return 0;
}
