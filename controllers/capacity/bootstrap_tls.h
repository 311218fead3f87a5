// --bootstrap-tls: the controller-manager makes the certificates of the per-node capacity
// endpoints itself and keeps them in Secrets, so that a cluster without a certificate manager
// still gets mutual TLS between the manager and the node drivers.
//
// Secrets in the capacity namespace (PREFIX = --bootstrap-tls-secret-prefix):
//   PREFIX-ca      ca.crt, ca.key        the CA (EC P-256, self-signed)
//   PREFIX-server  tls.crt, tls.key, ca.crt  for the drivers' --capacity-listen; its only name
//                  is the DNS name `server_name` (pod IPs are not known in advance: the manager
//                  verifies the server against that name, whatever address it dials)
//   PREFIX-client  tls.crt, tls.key, ca.crt  the manager's client certificate
// Missing Secrets are created; existing ones are reused as they are (a restart changes nothing).
// If the CA is missing, all three are made anew. Two managers racing: the one whose create fails
// with AlreadyExists reads the other's.
#pragma once

#include <string>

#include "apiclient/client.h"
#include "common/status.h"
#include "controllers/capacity/source.h"

namespace ephemera::controllers {

struct CertificateAndKey {
  std::string cert_pem, key_pem;
};

// A new self-signed CA valid for `days`.
StatusOr<CertificateAndKey> MakeCa(const std::string& common_name, int days);
// A leaf certificate signed by `ca`: for a server (serverAuth, SAN DNS:`name`) or a client
// (clientAuth, CN `name`).
StatusOr<CertificateAndKey> MakeLeaf(const CertificateAndKey& ca, const std::string& name,
                                     bool server, int days);

// Makes sure the three Secrets exist, then writes the client's files (ca.crt, tls.crt, tls.key,
// mode 0600) into `dir` and returns their paths.
StatusOr<TlsFiles> BootstrapTls(apiclient::ApiClient& client, const std::string& ns,
                                const std::string& prefix, const std::string& server_name,
                                const std::string& dir);

}  // namespace ephemera::controllers
