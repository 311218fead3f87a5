#include "controllers/capacity/bootstrap_tls.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <system_error>
#include <vector>

#include "apiclient/config.h"
#include "apiclient/errors.h"
#include "common/base64.h"
#include "common/log.h"

namespace ephemera::controllers {
namespace {

using apiclient::Field;
using apiclient::Object;

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
};
using Key = std::unique_ptr<EVP_PKEY, Free>;
using Cert = std::unique_ptr<X509, Free>;
using Bio = std::unique_ptr<BIO, Free>;

Status Ssl(const char* what) {
  return Status::Internal(std::string("openssl: ") + what);
}

std::string Pem(const std::function<int(BIO*)>& write) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || write(bio.get()) != 1) return "";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

bool AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (ext == nullptr) return false;
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return ok == 1;
}

// A certificate for a new P-256 key, subject CN=`cn`, signed by `issuer_key` (itself when null).
StatusOr<CertificateAndKey> Make(const std::string& cn, int days, X509* issuer,
                                 EVP_PKEY* issuer_key,
                                 const std::vector<std::pair<int, std::string>>& extensions) {
  Key key(EVP_EC_gen("P-256"));
  if (!key) return Ssl("key generation");
  Cert cert(X509_new());
  if (!cert) return Ssl("X509_new");
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return Ssl("random serial");
  serial[0] &= 0x7f;  // positive
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  ASN1_INTEGER* sn = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  if (sn == nullptr) return Ssl("serial");
  X509_set_version(cert.get(), 2);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(days) * 24 * 3600);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
  X509_set_pubkey(cert.get(), key.get());
  for (const auto& [nid, value] : extensions) {
    if (!AddExtension(cert.get(), issuer ? issuer : cert.get(), nid, value)) {
      return Ssl("extension");
    }
  }
  if (X509_sign(cert.get(), issuer_key ? issuer_key : key.get(), EVP_sha256()) == 0) {
    return Ssl("sign");
  }
  CertificateAndKey out;
  out.cert_pem = Pem([&](BIO* b) { return PEM_write_bio_X509(b, cert.get()); });
  out.key_pem = Pem([&](BIO* b) {
    return PEM_write_bio_PrivateKey(b, key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  });
  if (out.cert_pem.empty() || out.key_pem.empty()) return Ssl("PEM");
  return out;
}

std::string Decode(const Object& secret, const char* key) {
  auto decoded = Base64Decode(Field(secret, "data", key));
  return decoded.ok() ? *decoded : std::string();
}

Object SecretObject(const std::string& ns, const std::string& name,
                    const std::map<std::string, std::string>& data) {
  Object d = Object::object();
  for (const auto& [k, v] : data)
    d[k] = Base64Encode(v);
  return {{"apiVersion", "v1"},
          {"kind", "Secret"},
          {"metadata",
           {{"name", name},
            {"namespace", ns},
            {"labels", {{"app.kubernetes.io/managed-by", "ephemera-controller-manager"}}}}},
          {"type", "Opaque"},
          {"data", d}};
}

// The Secret `name`, created from `make()` when missing (and the one that won a race otherwise).
StatusOr<apiclient::ObjectPtr> Ensure(
    apiclient::ApiClient& client, const std::string& ns, const std::string& name,
    const std::function<StatusOr<std::map<std::string, std::string>>()>& make) {
  auto existing = client.Get(apiclient::resources::kSecrets, ns, name);
  if (existing.ok()) return existing;
  if (!apiclient::IsNotFound(existing.status())) return existing.status();
  auto data = make();
  if (!data.ok()) return data.status();
  auto created = client.Create(apiclient::resources::kSecrets, ns, SecretObject(ns, name, *data));
  if (created.ok()) {
    log::Info("bootstrap-tls: created Secret", {{"namespace", ns}, {"name", name}});
    return created;
  }
  if (apiclient::IsAlreadyExists(created.status())) {
    return client.Get(apiclient::resources::kSecrets, ns, name);
  }
  return created.status();
}

// Writes `data` to a file that is never readable by others, not even for a moment: created with
// mode 0600 (the key is secret), its mode forced again if it existed.
Status WriteFile(const std::string& path, const std::string& data) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return Status::Internal("cannot write " + path + ": " + std::generic_category().message(errno));
  Status status;
  if (fchmod(fd, 0600) != 0) {
    status =
        Status::Internal("cannot restrict " + path + ": " + std::generic_category().message(errno));
  }
  for (size_t done = 0; status.ok() && done < data.size();) {
    const ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      status =
          Status::Internal("cannot write " + path + ": " + std::generic_category().message(errno));
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (close(fd) != 0 && status.ok()) {
    status =
        Status::Internal("cannot write " + path + ": " + std::generic_category().message(errno));
  }
  return status;
}

}  // namespace

StatusOr<CertificateAndKey> MakeCa(const std::string& common_name, int days) {
  return Make(common_name, days, nullptr, nullptr,
              {{NID_basic_constraints, "critical,CA:TRUE"},
               {NID_key_usage, "critical,keyCertSign,cRLSign"},
               {NID_subject_key_identifier, "hash"}});
}

StatusOr<CertificateAndKey> MakeLeaf(const CertificateAndKey& ca, const std::string& name,
                                     bool server, int days) {
  Bio cert_bio(BIO_new_mem_buf(ca.cert_pem.data(), static_cast<int>(ca.cert_pem.size())));
  Bio key_bio(BIO_new_mem_buf(ca.key_pem.data(), static_cast<int>(ca.key_pem.size())));
  if (!cert_bio || !key_bio) return Ssl("BIO");
  Cert ca_cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  Key ca_key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (!ca_cert || !ca_key) return Status::InvalidArgument("bootstrap-tls: the CA does not parse");
  std::vector<std::pair<int, std::string>> ext = {
      {NID_basic_constraints, "critical,CA:FALSE"},
      {NID_key_usage, "critical,digitalSignature,keyEncipherment"},
      {NID_ext_key_usage, server ? "serverAuth" : "clientAuth"}};
  if (server) ext.emplace_back(NID_subject_alt_name, "DNS:" + name);
  return Make(name, days, ca_cert.get(), ca_key.get(), ext);
}

StatusOr<TlsFiles> BootstrapTls(apiclient::ApiClient& client, const std::string& ns,
                                const std::string& prefix, const std::string& server_name,
                                const std::string& dir) {
  constexpr int kDays = 3650;
  std::optional<CertificateAndKey> fresh_ca;
  auto ca_secret =
      Ensure(client, ns, prefix + "-ca", [&]() -> StatusOr<std::map<std::string, std::string>> {
        auto ca = MakeCa(prefix + "-ca", kDays);
        if (!ca.ok()) return ca.status();
        fresh_ca = *ca;
        return std::map<std::string, std::string>{{"ca.crt", ca->cert_pem},
                                                  {"ca.key", ca->key_pem}};
      });
  if (!ca_secret.ok()) return ca_secret.status().WithContext("bootstrap-tls: CA Secret");
  const CertificateAndKey ca{Decode(**ca_secret, "ca.crt"), Decode(**ca_secret, "ca.key")};
  if (ca.cert_pem.empty() || ca.key_pem.empty()) {
    return Status::FailedPrecondition("bootstrap-tls: Secret " + prefix +
                                      "-ca lacks ca.crt or ca.key");
  }
  // A new CA: leaves of an old one (if any) are replaced.
  if (fresh_ca) {
    for (const char* leaf : {"-server", "-client"})
      (void)client.Delete(apiclient::resources::kSecrets, ns, prefix + leaf, {});
  }
  auto leaf = [&](bool server) {
    return [&, server]() -> StatusOr<std::map<std::string, std::string>> {
      auto made = MakeLeaf(ca, server ? server_name : prefix + "-client", server, kDays);
      if (!made.ok()) return made.status();
      return std::map<std::string, std::string>{
          {"tls.crt", made->cert_pem}, {"tls.key", made->key_pem}, {"ca.crt", ca.cert_pem}};
    };
  };
  auto server = Ensure(client, ns, prefix + "-server", leaf(true));
  if (!server.ok()) return server.status().WithContext("bootstrap-tls: server Secret");
  auto client_secret = Ensure(client, ns, prefix + "-client", leaf(false));
  if (!client_secret.ok())
    return client_secret.status().WithContext("bootstrap-tls: client Secret");

  TlsFiles files{dir + "/ca.crt", dir + "/tls.crt", dir + "/tls.key"};
  EPHEMERA_RETURN_IF_ERROR(WriteFile(files.ca, ca.cert_pem));
  EPHEMERA_RETURN_IF_ERROR(WriteFile(files.cert, Decode(**client_secret, "tls.crt")));
  EPHEMERA_RETURN_IF_ERROR(WriteFile(files.key, Decode(**client_secret, "tls.key")));
  return files;
}

}  // namespace ephemera::controllers
