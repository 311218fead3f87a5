#include "common/base64.h"

#include <openssl/evp.h>

namespace ephemera {

std::string Base64Encode(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');  // and EVP_EncodeBlock's NUL
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

StatusOr<std::string> Base64Decode(std::string_view in) {
  std::string text;
  text.reserve(in.size() + 3);
  for (char c : in) {
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') text += c;
  }
  const size_t data = text.find_last_not_of('=') + 1;  // 0 when all is padding
  const size_t padding = text.size() - data;
  if (text.find('=') < data || padding > 2 || data % 4 == 1 ||
      (padding > 0 && text.size() % 4 != 0)) {
    return Status::InvalidArgument("invalid base64");
  }
  if (text.empty()) return std::string();
  text.resize(data);
  const size_t missing = (4 - data % 4) % 4;
  text.append(missing, '=');  // EVP_DecodeBlock wants whole quadruples
  std::string out(text.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0) return Status::InvalidArgument("invalid base64");
  out.resize(static_cast<size_t>(n) - missing);  // it counts the bytes of the padding as zeros
  return out;
}

}  // namespace ephemera
