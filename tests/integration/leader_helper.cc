// A leader-election candidate for the two-process test: campaigns for a Lease and appends
// "LEADING <identity>" / "STOPPED <identity>" lines to a file. SIGTERM stops it cleanly (and
// releases the lease); SIGKILL does not.
//   leader_helper KUBECONFIG NAMESPACE LEASE OUTPUT_FILE
#include <csignal>
#include <fstream>
#include <iostream>
#include <thread>

#include "apiclient/leader_election.h"
#include "apiclient/rest_client.h"

namespace {
std::atomic<bool> g_term{false};
}

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: leader_helper KUBECONFIG NAMESPACE LEASE OUTPUT_FILE\n";
    return 2;
  }
  using namespace ephemera::apiclient;
  auto config = LoadKubeconfig(argv[1]);
  if (!config.ok()) {
    std::cerr << config.status().ToString() << "\n";
    return 1;
  }
  auto client = RestClient::New(*config);
  if (!client.ok()) return 1;
  const std::string out = argv[4];
  auto append = [&out](const std::string& line) {
    std::ofstream f(out, std::ios::app);
    f << line << std::endl;
  };
  LeaderElectionConfig le{
      .lease_namespace = argv[2], .lease_name = argv[3], .identity = MakeLeaderIdentity()};
  LeaderElector elector(*client, le,
                        {.on_started_leading = [&] { append("LEADING " + le.identity); },
                         .on_stopped_leading = [&] { append("STOPPED " + le.identity); }});
  std::signal(SIGTERM, [](int) { g_term = true; });
  std::thread watcher([&] {
    while (!g_term)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    elector.Stop();
  });
  append("STARTED " + le.identity);
  elector.Run();
  g_term = true;
  watcher.join();
  return 0;
}
