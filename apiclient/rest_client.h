// RestClient: ApiClient over HTTPS (HttpsTransport: HTTP/1.1 on Boost.Beast).
//
// - TLS: the server certificate is verified against the config's CA (or the system's), for the
//   host of the server URL (or tls-server-name); client certificates and bearer tokens
//   authenticate us.
// - A client-side token bucket (RestConfig::qps / burst) paces every request, as client-go does.
// - Retries: responses with Retry-After (429, and 5xx that carry it) are retried after the delay
//   the server asks for (at most 10 times, each wait capped at 10 s); transport failures of reads
//   (GET, LIST) are retried 3 times with backoff. Writes are not retried on transport failures,
//   since they may have been applied.
// - Exec credential plugins: the credential is asked for before every request (the provider
//   caches it until it expires); a 401 answer makes the plugin run again and the request is sent
//   once more with the new credential (once per request, watches included).
// - Connections are kept alive and pooled by the transport; the calling thread does the I/O.
// - Watches are streamed: each event reaches WatchStream::Next() as soon as its line arrives.
//
// Thread safety: all methods may be called concurrently.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "apiclient/client.h"
#include "apiclient/config.h"
#include "apiclient/https_transport.h"
#include "apiclient/rate_limiter.h"

namespace ephemera::apiclient {

class FieldFilter;

// Decodes one line of a watch stream (a JSON object {type, object}) into *event, keeping only what
// `envelope_filter` keeps (null: everything). False with *error set for a line that is not an
// event (not JSON, no object, an unknown type or a wrong JSON type anywhere) and for an ERROR
// event (its Status, by StatusFromHttp). Never throws: the line comes from the network.
bool DecodeWatchEventLine(const std::string& text, const FieldFilter* envelope_filter,
                          const std::string& what, WatchEvent* event, Status* error);

// Called after every request with the verb ("GET", "LIST", "WATCH", "POST", ...), the HTTP code
// (0 for a transport failure) and the duration in seconds. For metrics.
using RequestObserver = std::function<void(std::string_view verb, int code, double seconds)>;

class RestClient final : public ApiClient {
 public:
  // Fails with INVALID_ARGUMENT when the config's certificates or keys cannot be loaded.
  static StatusOr<std::shared_ptr<RestClient>> New(RestConfig config,
                                                   RequestObserver observer = nullptr);
  ~RestClient() override;

  // ApiClient
  StatusOr<ObjectPtr> Get(const Resource& resource, const std::string& ns,
                          const std::string& name) override;
  StatusOr<ListResult> List(const Resource& resource, const std::string& ns,
                            const ListOptions& options) override;
  StatusOr<ObjectPtr> Create(const Resource& resource, const std::string& ns,
                             const Object& object) override;
  Status CreateOnly(const Resource& resource, const std::string& ns, const Object& object) override;
  StatusOr<ObjectPtr> Update(const Resource& resource, const std::string& ns,
                             const Object& object) override;
  StatusOr<ObjectPtr> UpdateStatus(const Resource& resource, const std::string& ns,
                                   const Object& object) override;
  StatusOr<ObjectPtr> MergePatch(const Resource& resource, const std::string& ns,
                                 const std::string& name, const Object& patch) override;
  StatusOr<ObjectPtr> Apply(const Resource& resource, const std::string& ns, const Object& object,
                            const std::string& field_manager, bool force) override;
  Status Delete(const Resource& resource, const std::string& ns, const std::string& name,
                const DeleteOptions& options) override;
  StatusOr<WatchStreamPtr> Watch(const Resource& resource, const std::string& ns,
                                 const WatchOptions& options) override;

  // GET of a path that is no API object (e.g. a pod's /metrics through the API server's proxy):
  // the body of a 2xx answer as text, or the mapped error.
  StatusOr<std::string> GetText(const std::string& path);

  const RestConfig& config() const { return config_; }
  // TLS connections opened so far (keep-alive reuses them).
  size_t connections_opened() const;

 private:
  struct RawResponse {
    int code = 0;
    std::string body;
  };
  RestClient(RestConfig config, RequestObserver observer,
             std::unique_ptr<HttpsTransport> transport);

  // One request with rate limiting and retries. `path` includes the query string.
  StatusOr<RawResponse> Do(std::string_view method, std::string_view verb, const std::string& path,
                           const std::string* body, std::string_view content_type);
  // Do() and then the JSON of a 2xx body, or the mapped error.
  StatusOr<Object> DoJson(std::string_view method, std::string_view verb, const std::string& path,
                          const std::string* body, std::string_view content_type);
  // The Authorization header's value for the current token ("" without one). With an exec
  // plugin, *used is the credential it came from (for Invalidate() after a 401), and a client
  // certificate from the plugin is given to the transport.
  StatusOr<std::string> Authorization(std::shared_ptr<const ExecCredential>* used);
  // DoJson() as a shared object.
  StatusOr<ObjectPtr> DoObject(std::string_view method, std::string_view verb,
                               const std::string& path, const std::string* body,
                               std::string_view content_type);

  const RestConfig config_;
  const RequestObserver observer_;
  TokenBucket limiter_;
  const std::unique_ptr<HttpsTransport> transport_;
  std::mutex cert_mu_;
  std::string exec_cert_pem_;  // GUARDED_BY(cert_mu_): the plugin's certificate in the transport
};

}  // namespace ephemera::apiclient
