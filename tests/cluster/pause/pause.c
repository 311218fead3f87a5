// The pod sandbox ("pause") process of ephemera's own pause image: scripts/images compiles it with
// `gcc -static` into ephemera.local/pause:1. It holds the pod's namespaces and does nothing: it
// waits until SIGINT or SIGTERM and then exits 0. As PID 1 of a pod that shares its PID namespace
// it also reaps the orphans re-parented to it (SIGCHLD).
// The signals stay blocked except inside sigsuspend(), so one that arrives between the check of
// `stop_signal` and the wait is not lost.
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop_signal;
static volatile sig_atomic_t child_exited;

static void on_signal(int sig) {
  if (sig == SIGCHLD) {
    child_exited = 1;
  } else {
    stop_signal = sig;
  }
}

int main(int argc, char** argv) {
  if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
    puts("ephemera pause 1");
    return 0;
  }
  if (argc > 1) {
    fprintf(stderr, "usage: %s [--version]\n", argv[0]);
    return 2;
  }
  sigset_t blocked, waiting;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGINT);
  sigaddset(&blocked, SIGTERM);
  sigaddset(&blocked, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &blocked, &waiting) != 0) {
    perror("pause: sigprocmask");
    return 1;
  }
  sigdelset(&waiting, SIGINT);
  sigdelset(&waiting, SIGTERM);
  sigdelset(&waiting, SIGCHLD);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigfillset(&sa.sa_mask);
  sa.sa_flags = SA_NOCLDSTOP;
  if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
      sigaction(SIGCHLD, &sa, NULL) != 0) {
    perror("pause: sigaction");
    return 1;
  }
  if (getpid() != 1) fprintf(stderr, "pause: not running as PID 1\n");
  while (!stop_signal) {
    sigsuspend(&waiting);
    if (child_exited) {
      child_exited = 0;
      while (waitpid(-1, NULL, WNOHANG) > 0) {
      }
    }
  }
  fprintf(stderr, "pause: exiting on signal %d\n", (int)stop_signal);
  return 0;
}
