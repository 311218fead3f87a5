// kubectl-ephemera: the kubectl plugin (`kubectl ephemera ...` finds it on $PATH). Everything but
// the argument hand-over lives in plugin/cli.cc.
#include <iostream>
#include <string>
#include <vector>

#include "plugin/cli.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  return ephemera::plugin::Run(args, ephemera::plugin::ConnectToCluster, std::cout, std::cerr);
}
