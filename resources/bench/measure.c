/*
 * Runs one command and measures it, for resources/bench/boot.sh.
 *
 *   measure MARKER -- COMMAND [ARGS...]
 *
 * Prints, on stdout, one line:
 *   MEASURE marker_us=N exit_us=N maxrss_kb=N cpu_us=N rc=N boot_time_us=N
 * where the times count from just before exec: marker_us when a line of the command's output
 * (stdout and stderr merged) first contains MARKER (-1 if never), exit_us when it exits.
 * maxrss_kb is the child's peak resident set size and cpu_us its user + system CPU time, both
 * from wait4(); boot_time_us is the value of a "Guest-boot-time = N us" line (-1 if none).
 * Lines of the command's output that start with "BENCH" or "KILN-SCRIPT-EXIT", and kiln's
 * "CPU time:" log line, are passed through; the rest is discarded.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv) {
    if (argc < 4 || strcmp(argv[2], "--") != 0) {
        fprintf(stderr, "usage: %s MARKER -- COMMAND [ARGS...]\n", argv[0]);
        return 2;
    }
    const char *marker = argv[1];
    int pipefd[2];
    if (pipe(pipefd) != 0) {
        perror("pipe");
        return 2;
    }
    long long start = now_us();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        dup2(pipefd[1], STDOUT_FILENO);
        dup2(pipefd[1], STDERR_FILENO);
        close(pipefd[0]);
        close(pipefd[1]);
        execvp(argv[3], &argv[3]);
        perror("exec");
        _exit(127);
    }
    close(pipefd[1]);
    FILE *out = fdopen(pipefd[0], "r");
    char *line = NULL;
    size_t cap = 0;
    long long marker_us = -1, boot_time_us = -1;
    while (getline(&line, &cap, out) >= 0) {
        if (marker_us < 0 && strstr(line, marker))
            marker_us = now_us() - start;
        if (strncmp(line, "BENCH", 5) == 0 || strncmp(line, "KILN-SCRIPT-EXIT", 16) == 0 ||
            strstr(line, "CPU time: "))
            fputs(line, stdout);
        char *bt = strstr(line, "Guest-boot-time =");
        if (bt && boot_time_us < 0)
            boot_time_us = atoll(bt + strlen("Guest-boot-time ="));
    }
    int status = 0;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("wait4");
        return 2;
    }
    long long exit_us = now_us() - start;
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    long long cpu_us = (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec +
                       (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
    printf("MEASURE marker_us=%lld exit_us=%lld maxrss_kb=%ld cpu_us=%lld rc=%d boot_time_us=%lld\n",
           marker_us, exit_us, ru.ru_maxrss, cpu_us, rc, boot_time_us);
    free(line);
    return 0;
}
