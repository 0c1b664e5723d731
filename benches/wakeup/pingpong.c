/* Round trip of one byte between two processes over pipes: what waking a thread costs on
 * this machine, on one CPU and across two. A FUSE request is two such wakeups.
 * Usage: pingpong CPU_A CPU_B [ROUNDS]   (-1: not pinned) */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0) { perror("sched_setaffinity"); exit(1); }
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: pingpong CPU_A CPU_B [ROUNDS]\n"); return 2; }
    int a = atoi(argv[1]), b = atoi(argv[2]), n = argc > 3 ? atoi(argv[3]) : 20000;
    int there[2], back[2];
    char x = 0;
    if (pipe(there) || pipe(back)) { perror("pipe"); return 1; }
    pid_t child = fork();
    if (child < 0) { perror("fork"); return 1; }
    if (child == 0) {
        pin(b);
        while (read(there[0], &x, 1) == 1)
            if (write(back[1], &x, 1) != 1) _exit(1);
        _exit(0);
    }
    pin(a);
    double t = now_us();
    for (int i = 0; i < n; i++)
        if (write(there[1], &x, 1) != 1 || read(back[0], &x, 1) != 1) { perror("io"); return 1; }
    printf("cpu %d <-> cpu %d: %.2f us per round trip\n", a, b, (now_us() - t) / n);
    close(there[1]);
    return 0;
}
