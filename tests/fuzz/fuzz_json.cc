// Fuzz target for the parsers of JSON from outside: the driver's state records, LVM's reports,
// watch-event lines and error bodies from the API server, exec credential plugins' output, objects
// read through a field filter. The first byte selects the parser, the rest is the text. Every
// parser must answer with a value or an error, never crash, hang or throw; a state record that
// parses must survive a write and read unchanged.
#include <cstddef>
#include <cstdint>
#include <string>

#include "apiclient/errors.h"
#include "apiclient/exec_credential.h"
#include "apiclient/field_filter.h"
#include "apiclient/rest_client.h"
#include "csi/backends/lvm_device_manager.h"
#include "csi/state/state_store.h"

namespace {

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ephemera;  // NOLINT(google-build-using-namespace)
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 6) {
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
          {"object",
           apiclient::FieldFilter{
               {"metadata", apiclient::FieldFilter{{"name", apiclient::FieldFilter()},
                                                   {"ownerReferences", apiclient::FieldFilter()}}},
               {"spec", apiclient::FieldFilter()}}}};
      for (const apiclient::FieldFilter* filter :
           {static_cast<const apiclient::FieldFilter*>(nullptr), &envelope}) {
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
    default: {
      static const apiclient::FieldFilter pods = {
          {"metadata", apiclient::FieldFilter{{"name", apiclient::FieldFilter()},
                                              {"uid", apiclient::FieldFilter()}}},
          {"spec", apiclient::FieldFilter{{"volumes", apiclient::FieldFilter()}}}};
      (void)apiclient::ParseFiltered(text, &pods);
      break;
    }
  }
  return 0;
}
