/* corral-agent: the in-sandbox step agent, compiled. It speaks the agent protocol of
 * sandbox/runtime/agent_protocol.py (the schema; this file follows it, and
 * tests/integration/executor/test_agent_conformance.py holds both agents to the same replies)
 * and serves the hot path itself: ready, run (shell, python, argv) with its output streamed and
 * capped, kill, stdin, signal and chdir.
 *
 * Everything else -- the file operations, TypeScript runs (their warm checker), a request this
 * side does not take as it is (malformed, an unknown op, a field it would not decode exactly as
 * Python does) -- goes, line for line, to the Python agent (sandbox/runtime/agent.py, the
 * readable reference), started as a child on first need; its replies come back through here.
 *
 * One thread, one poll loop: a run's pipes, its pidfd and its stdin are all in it. Like the
 * Python agent it makes itself undumpable first (steps run as its uid and must not ptrace it or
 * write into its /proc entries). Standard C and Linux only: scripts/build-agent builds it. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

#define PROTOCOL_VERSION 5
#define MIB (1024LL * 1024)
#define READ_CHUNK (64 * 1024)
#define DRAIN_SECONDS 0.2
#define LINGER_MS 1
#define MAX_STDIN_QUEUED (4 * MIB)
#define PIPE_BYTES (1024 * 1024)
#define PYTHON "/usr/bin/python3"
/* protocol.AGENT_BOOT: the Python agent imported from its directory (its cached bytecode). */
#define AGENT_BOOT "import sys; sys.path.insert(0, sys.argv[1].rpartition('/')[0]); import agent; agent.main()"
#define INTERNAL_ID (-1) /* requests of our own to the Python agent; their replies stay here */

extern char **environ;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void kill_all_and_exit(void);

/* --- replies -------------------------------------------------------------------------------- */

static void write_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {fd, POLLOUT, 0};
            poll(&p, 1, -1);
            continue;
        }
        if (n < 0) kill_all_and_exit(); /* the executor went away */
        data += n;
        len -= (size_t)n;
    }
}

static void send_line(buffer *b) {
    buf_add(b, "\n", 1);
    write_all(1, b->data, b->len);
    buf_free(b);
}

static void reply_head(buffer *b, const char *type, long long id) {
    buf_fmt(b, "{\"type\": \"%s\", \"id\": %lld", type, id);
}

static void send_error(long long id, const char *message) {
    buffer b = {0};
    reply_head(&b, "error", id);
    buf_str(&b, ", \"error\": ");
    buf_json_string(&b, message, strlen(message));
    buf_str(&b, ", \"missing\": false}");
    send_line(&b);
}

static void send_done(long long id) {
    buffer b = {0};
    reply_head(&b, "done", id);
    buf_str(&b, ", \"path\": \"\"}");
    send_line(&b);
}

/* The exit report of a run that never started (protocol.ExitReply with only `error`). */
static void send_failed(long long id, const char *error) {
    buffer b = {0};
    reply_head(&b, "exit", id);
    buf_str(&b, ", \"exit_code\": null, \"signal\": null, \"timed_out\": false, \"killed\": false, "
                "\"stdout_truncated\": false, \"stderr_truncated\": false, \"error\": ");
    buf_json_string(&b, error, strlen(error));
    buf_str(&b, ", \"limit_events\": {}}");
    send_line(&b);
}

/* --- request fields, checked as agent_protocol's from_json checks them ------------------------
 * Each returns 0, or -1 for a value of the wrong type (the request then goes to the Python agent,
 * whose decoder words the error). */

static int field_int(const jval *req, const char *key, long long fallback, long long *out) {
    const jval *v = json_get(req, key);
    if (v == NULL) { *out = fallback; return 0; }
    if (v->type != J_INT) return -1;
    *out = v->integer;
    return 0;
}

static int field_float(const jval *req, const char *key, double fallback, double *out) {
    const jval *v = json_get(req, key);
    if (v == NULL) { *out = fallback; return 0; }
    if (v->type == J_INT) *out = (double)v->integer;
    else if (v->type == J_FLOAT) *out = v->number;
    else return -1;
    return 0;
}

static int field_bool(const jval *req, const char *key, int *out) {
    const jval *v = json_get(req, key);
    if (v == NULL) { *out = 0; return 0; }
    if (v->type != J_BOOL) return -1;
    *out = v->boolean;
    return 0;
}

/* A string field; `plain`: it goes to exec or the kernel, so a NUL in it is left to Python. */
static int field_str(const jval *req, const char *key, const jval **out, int plain) {
    const jval *v = json_get(req, key);
    *out = v;
    if (v == NULL) return 0;
    if (v->type != J_STR || (plain && strlen(v->str) != v->len)) return -1;
    return 0;
}

static int field_str_list(const jval *req, const char *key, const jval **out) {
    const jval *v = json_get(req, key);
    *out = v;
    if (v == NULL) return 0;
    if (v->type != J_ARR) return -1;
    for (size_t i = 0; i < v->count; i++)
        if (v->items[i].type != J_STR || strlen(v->items[i].str) != v->items[i].len) return -1;
    return 0;
}

/* dict[str, str], each name one an environment can hold (Python refuses the others). */
static int field_env(const jval *req, const char *key, const jval **out) {
    const jval *v = json_get(req, key);
    *out = v;
    if (v == NULL) return 0;
    if (v->type != J_OBJ) return -1;
    for (size_t i = 0; i < v->count; i++) {
        if (v->key_lens[i] == 0 || strlen(v->keys[i]) != v->key_lens[i] || strchr(v->keys[i], '=')) return -1;
        if (v->items[i].type != J_STR || strlen(v->items[i].str) != v->items[i].len) return -1;
    }
    return 0;
}

/* --- the Python agent, for what this one does not serve ------------------------------------ */

typedef struct {
    long long id;
    int is_run; /* answered by its exit report; anything else by one reply */
} pending_request;

static struct {
    pid_t pid;
    int requests, replies; /* our ends of its stdin and stdout; -1 when it is not running */
    int ready;             /* its ready line has been read (and dropped) */
    buffer outgoing;       /* lines for its stdin not written yet */
    size_t outgoing_sent;
    buffer incoming;       /* the start of a reply line not complete yet */
    pending_request *pending;
    size_t pending_count, pending_cap;
} helper = {0, -1, -1, 0, {0}, 0, {0}, NULL, 0, 0};

static char agent_py[PATH_MAX];

/* The helper starts while steps run (as its uid), and makes itself undumpable only once its
 * interpreter is up: until then a step could open its /proc/PID/mem and keep it (code
 * injection; test_agent_helper.py). So its interpreter is an execute-only copy of python3 beside
 * it (corral-python3, made by scripts/build-agent and the image build): a program its user
 * cannot read is undumpable from exec on. Without that copy there is no helper. Its channel is
 * a pair of sockets, which /proc/PID/fd cannot open (a pipe there could be). */
static char helper_python[PATH_MAX];

static int helper_start(void) {
    int requests[2], replies[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, requests) < 0) return -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, replies) < 0) {
        close(requests[0]);
        close(requests[1]);
        return -1;
    }
    shutdown(requests[1], SHUT_RD);
    shutdown(replies[0], SHUT_WR);
    const char *python = helper_python;
    pid_t pid = access(python, X_OK) == 0 ? fork() : (errno = ENOENT, -1);
    if (pid == 0) {
        dup2(requests[0], 0);
        dup2(replies[1], 1);
        signal(SIGPIPE, SIG_DFL);
        char *argv[] = {(char *)python, "-I", "-S", "-c", AGENT_BOOT, agent_py, NULL};
        execve(python, argv, environ);
        _exit(127);
    }
    close(requests[0]);
    close(replies[1]);
    if (pid < 0) {
        close(requests[1]);
        close(replies[0]);
        return -1;
    }
    fcntl(requests[1], F_SETFL, O_NONBLOCK);
    helper.pid = pid;
    helper.requests = requests[1];
    helper.replies = replies[0];
    helper.ready = 0;
    return 0;
}

static void helper_track(long long id, int is_run) {
    if (helper.pending_count == helper.pending_cap) {
        helper.pending_cap = helper.pending_cap ? helper.pending_cap * 2 : 16;
        helper.pending = realloc(helper.pending, helper.pending_cap * sizeof *helper.pending);
        if (helper.pending == NULL) _exit(70);
    }
    helper.pending[helper.pending_count++] = (pending_request){id, is_run};
}

static int helper_runs(long long id) {
    for (size_t i = 0; i < helper.pending_count; i++)
        if (helper.pending[i].is_run && helper.pending[i].id == id) return 1;
    return 0;
}

/* Hands a request line to the Python agent (starting it if needed). `req` is the line parsed,
 * when it could be, and `op` its op: what its reply will be is tracked, so that a helper that
 * dies does not leave the executor waiting for it. */
static void helper_forward(const char *line, size_t len, const jval *req, const char *op) {
    if (helper.requests < 0 && helper_start() < 0) {
        const jval *id = json_get(req, "id");
        long long rid = id && id->type == J_INT ? id->integer : 0;
        char error[PATH_MAX + 128];
        snprintf(error, sizeof error, "the sandbox agent's Python helper (%s) did not start: %s", helper_python, strerror(errno));
        if (op && strcmp(op, "run") == 0) send_failed(rid, error);
        else if (!op || strcmp(op, "kill") != 0) send_error(rid, error);
        return;
    }
    const jval *id = json_get(req, "id");
    if (op && id && id->type == J_INT && strcmp(op, "kill") != 0) helper_track(id->integer, strcmp(op, "run") == 0);
    buf_add(&helper.outgoing, line, len);
    buf_add(&helper.outgoing, "\n", 1);
}

/* The type and id of a reply line as the Python agent writes it: {"type": "T", "id": N, ... */
static int reply_kind(const char *line, size_t len, char *type, size_t type_size, long long *id) {
    const char *prefix = "{\"type\": \"";
    size_t n = strlen(prefix);
    if (len < n || memcmp(line, prefix, n) != 0) return -1;
    const char *end = memchr(line + n, '"', len - n);
    if (end == NULL || (size_t)(end - line - n) >= type_size) return -1;
    memcpy(type, line + n, (size_t)(end - line - n));
    type[end - line - n] = 0;
    const char *after = ", \"id\": ";
    if ((size_t)(line + len - end - 1) < strlen(after) || memcmp(end + 1, after, strlen(after)) != 0) return -1;
    *id = strtoll(end + 1 + strlen(after), NULL, 10);
    return 0;
}

static void helper_reply(const char *line, size_t len) {
    if (!helper.ready) { /* its ready line: this agent's was sent long ago */
        helper.ready = 1;
        return;
    }
    char type[32];
    long long id;
    if (reply_kind(line, len, type, sizeof type, &id) == 0) {
        if (id == INTERNAL_ID) return;
        int output = strcmp(type, "output") == 0, exit_reply = strcmp(type, "exit") == 0;
        for (size_t i = 0; i < helper.pending_count && !output; i++) {
            pending_request *p = &helper.pending[i];
            /* a run ends with its exit report, or an error when it was refused as malformed */
            if (p->id == id && (!p->is_run || exit_reply || strcmp(type, "error") == 0)) {
                *p = helper.pending[--helper.pending_count];
                break;
            }
        }
    }
    write_all(1, line, len);
    write_all(1, "\n", 1);
}

/* The helper ended (or closed its stdout): whatever it still owed is answered with an error. */
static void helper_ended(void) {
    if (helper.incoming.len > 0) helper_reply(helper.incoming.data, helper.incoming.len);
    buf_free(&helper.incoming);
    buf_free(&helper.outgoing);
    helper.outgoing_sent = 0;
    close(helper.requests);
    close(helper.replies);
    helper.requests = helper.replies = -1;
    kill(helper.pid, SIGKILL);
    waitpid(helper.pid, NULL, 0);
    for (size_t i = 0; i < helper.pending_count; i++) {
        if (helper.pending[i].is_run) send_failed(helper.pending[i].id, "could not run the step: the sandbox agent's Python helper ended");
        else send_error(helper.pending[i].id, "the sandbox agent's Python helper ended before answering");
    }
    helper.pending_count = 0;
}

static void helper_readable(void) {
    char chunk[READ_CHUNK];
    ssize_t n = read(helper.replies, chunk, sizeof chunk);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) {
        helper_ended();
        return;
    }
    buf_add(&helper.incoming, chunk, (size_t)n);
    size_t start = 0;
    for (;;) {
        char *nl = memchr(helper.incoming.data + start, '\n', helper.incoming.len - start);
        if (nl == NULL) break;
        helper_reply(helper.incoming.data + start, (size_t)(nl - helper.incoming.data - start));
        start = (size_t)(nl - helper.incoming.data) + 1;
    }
    memmove(helper.incoming.data, helper.incoming.data + start, helper.incoming.len - start);
    helper.incoming.len -= start;
}

static void helper_writable(void) {
    ssize_t n = write(helper.requests, helper.outgoing.data + helper.outgoing_sent, helper.outgoing.len - helper.outgoing_sent);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n < 0) {
        helper_ended();
        return;
    }
    helper.outgoing_sent += (size_t)n;
    if (helper.outgoing_sent == helper.outgoing.len) {
        helper.outgoing.len = 0;
        helper.outgoing_sent = 0;
    }
}

/* --- processes ------------------------------------------------------------------------------ */

/* pid -> (ppid, session, state) of every process the sandbox shows, as agent._proc_table. */
typedef struct {
    int pid, ppid, sid;
    char state;
} proc_entry;

static size_t proc_table(proc_entry **out) {
    size_t count = 0, cap = 64;
    proc_entry *table = malloc(cap * sizeof *table);
    DIR *proc = opendir("/proc");
    if (proc == NULL || table == NULL) {
        if (proc) closedir(proc);
        *out = table;
        return 0;
    }
    struct dirent *entry;
    while ((entry = readdir(proc)) != NULL) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        if (*end || pid <= 0) continue;
        char path[64], raw[1024];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, raw, sizeof raw - 1);
        close(fd);
        if (n <= 0) continue;
        raw[n] = 0;
        char *paren = strrchr(raw, ')');
        char state;
        int ppid, pgrp, sid;
        if (paren == NULL || sscanf(paren + 2, "%c %d %d %d", &state, &ppid, &pgrp, &sid) != 4) continue;
        if (count == cap) {
            cap *= 2;
            proc_entry *grown = realloc(table, cap * sizeof *table);
            if (grown == NULL) break;
            table = grown;
        }
        table[count++] = (proc_entry){(int)pid, ppid, sid, state};
    }
    closedir(proc);
    *out = table;
    return count;
}

/* A step's whole process tree: its session plus every descendant, until none is left; each is
 * stopped before being killed so it cannot fork faster than we kill (agent.kill_tree). */
static void kill_tree(pid_t root) {
    pid_t me = getpid();
    for (int round = 0; round < 100; round++) {
        proc_entry *table;
        size_t count = proc_table(&table);
        char *victim = calloc(count ? count : 1, 1);
        size_t victims = 0;
        for (size_t i = 0; i < count; i++)
            if (table[i].state != 'Z' && (table[i].sid == root || table[i].pid == root)) victim[i] = 1;
        for (int grew = 1; grew;) {
            grew = 0;
            for (size_t i = 0; i < count; i++) {
                if (victim[i] || table[i].state == 'Z') continue;
                for (size_t j = 0; j < count; j++)
                    if (victim[j] && table[j].pid == table[i].ppid) { victim[i] = 1; grew = 1; break; }
            }
        }
        for (size_t i = 0; i < count; i++)
            if (victim[i] && table[i].pid != me && table[i].pid != 1) victims++;
            else victim[i] = 0;
        for (int sig = 0; sig < 2; sig++)
            for (size_t i = 0; i < count; i++)
                if (victim[i]) kill(table[i].pid, sig == 0 ? SIGSTOP : SIGKILL);
        free(victim);
        free(table);
        if (victims == 0) return;
        nanosleep(&(struct timespec){0, 5000000}, NULL);
    }
}

/* The sandbox cgroup's counters (visible in a container, absent under bubblewrap):
 * agent.CGROUP_COUNTERS, in its order. Returns a bit per counter found. */
static const char *const counter_names[2] = {"oom_kill", "pids_max"};
static const char *const counter_files[2][2][2] = {
    {{"/sys/fs/cgroup/memory.events", "oom_kill"}, {"/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"}},
    {{"/sys/fs/cgroup/pids.events", "max"}, {"/sys/fs/cgroup/pids/pids.events", "max"}},
};

static int cgroup_counters(long long values[2]) {
    int found = 0;
    for (int c = 0; c < 2; c++) {
        for (int k = 0; k < 2 && !(found & (1 << c)); k++) {
            FILE *f = fopen(counter_files[c][k][0], "re");
            if (f == NULL) continue;
            char name[64];
            long long value;
            while (fscanf(f, "%63s %lld", name, &value) == 2)
                if (strcmp(name, counter_files[c][k][1]) == 0) {
                    values[c] = value;
                    found |= 1 << c;
                    break;
                }
            fclose(f);
        }
    }
    return found;
}

/* --- runs ----------------------------------------------------------------------------------- */

typedef struct run {
    struct run *next;
    long long id;
    pid_t pid;
    int pidfd;
    int pipes[2]; /* stdout, stderr; -1 once closed */
    long long cap, kept[2];
    int truncated[2];
    unsigned char held[2][4];
    size_t held_len[2];
    double deadline, exited_at; /* exited_at < 0: still running */
    int status, timed_out, killed, kill_requested;
    long long counters_before[2];
    int counters_found;
    /* stdin (with_stdin): queued bytes, written as the process reads them */
    int with_stdin, stdin_fd, stdin_close;
    buffer stdin_queue;
    size_t stdin_sent;
} run;

static run *runs = NULL;
/* Pipes a finished run's background processes still hold open: read and dropped until closed. */
static int *discarded = NULL;
static size_t discarded_count = 0;

static run *find_run(long long id) {
    for (run *r = runs; r; r = r->next)
        if (r->id == id) return r;
    return NULL;
}

static void send_output(run *r, int stream, const unsigned char *data, size_t len, int final) {
    long long room = r->cap - r->kept[stream];
    if ((long long)len > room) {
        len = room > 0 ? (size_t)room : 0;
        r->truncated[stream] = 1;
    }
    r->kept[stream] += (long long)len;
    buffer text = {0};
    utf8_replace(&text, r->held[stream], &r->held_len[stream], data, len, final);
    if (text.len > 0) {
        buffer b = {0};
        reply_head(&b, "output", r->id);
        buf_str(&b, stream ? ", \"stream\": \"stderr\", \"data\": " : ", \"stream\": \"stdout\", \"data\": ");
        buf_json_string(&b, text.data, text.len);
        buf_str(&b, "}");
        send_line(&b);
    }
    buf_free(&text);
}

static void close_stdin(run *r) {
    if (r->stdin_fd >= 0) close(r->stdin_fd);
    r->stdin_fd = -1;
    buf_free(&r->stdin_queue);
    r->stdin_sent = 0;
}

static void finish_run(run *r) {
    for (int s = 0; s < 2; s++) {
        if (r->pipes[s] < 0) continue;
        int *grown = realloc(discarded, (discarded_count + 1) * sizeof *discarded);
        if (grown == NULL) { close(r->pipes[s]); continue; }
        discarded = grown;
        discarded[discarded_count++] = r->pipes[s];
    }
    if (r->pidfd >= 0) close(r->pidfd);
    close_stdin(r);
    long long after[2] = {0, 0}, events[2] = {0, 0};
    int found = cgroup_counters(after), any = 0;
    for (int c = 0; c < 2; c++)
        if (found & (1 << c)) {
            events[c] = after[c] - ((r->counters_found & (1 << c)) ? r->counters_before[c] : after[c]);
            any |= events[c] != 0;
        }
    if ((found & 2) && events[1]) kill_tree(r->pid); /* a full process table: what it left goes too */
    buffer b = {0};
    reply_head(&b, "exit", r->id);
    int code = WIFEXITED(r->status) ? WEXITSTATUS(r->status) : -1, sig = WIFSIGNALED(r->status) ? WTERMSIG(r->status) : 0;
    if (code >= 0) buf_fmt(&b, ", \"exit_code\": %d, \"signal\": null", code);
    else buf_fmt(&b, ", \"exit_code\": null, \"signal\": %d", sig);
    buf_fmt(&b, ", \"timed_out\": %s, \"killed\": %s, \"stdout_truncated\": %s, \"stderr_truncated\": %s, \"error\": \"\", \"limit_events\": {",
            r->timed_out ? "true" : "false", r->killed ? "true" : "false", r->truncated[0] ? "true" : "false",
            r->truncated[1] ? "true" : "false");
    if (any) {
        const char *separator = "";
        for (int c = 0; c < 2; c++)
            if (found & (1 << c)) {
                buf_fmt(&b, "%s\"%s\": %lld", separator, counter_names[c], events[c]);
                separator = ", ";
            }
    }
    buf_str(&b, "}}");
    send_line(&b);
    run **link = &runs;
    while (*link != r) link = &(*link)->next;
    *link = r->next;
    free(r);
}

/* `name` looked up in the step's PATH as agent._executable does (execvpe's rule). */
static int find_executable(const char *name, const jval *env, char *out, size_t size) {
    if (strchr(name, '/')) {
        snprintf(out, size, "%s", name);
        return 0;
    }
    const jval *path_value = json_get(env, "PATH");
    const char *path = path_value ? path_value->str : "/bin:/usr/bin";
    for (const char *p = path;; p++) {
        const char *colon = strchr(p, ':');
        size_t n = colon ? (size_t)(colon - p) : strlen(p);
        if (n == 0) snprintf(out, size, "%s", name);
        else snprintf(out, size, "%.*s/%s", (int)n, p, name);
        struct stat st;
        if (access(out, X_OK) == 0 && !(stat(out, &st) == 0 && S_ISDIR(st.st_mode))) return 0;
        if (colon == NULL) break;
        p = colon;
    }
    return ENOENT;
}

typedef struct {
    long long memory_mb, max_processes, max_file_size_mb;
} process_limits;

/* In the child, between fork and exec: what agent.spawn (and _limit_setter) give a step.
 * Reports an errno on `report` and exits when it cannot; stage 1: the limits, 2: the start. */
static void become_step(int report, int fds[3], char **argv, char **envp, const jval *env, const char *cwd,
                        const process_limits *limits) {
    int failure[2] = {0, 0};
    setsid();
    for (int target = 0; target < 3; target++) dup2(fds[target], target);
    /* What Popen's restore_signals does; SIGINT stays ignored, as the Python agent's steps have it. */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, "500", 3) < 0) { /* best effort: the OOM killer picks steps first */ }
        close(fd);
    }
    struct { int resource; long long value; } wanted[3] = {
        {RLIMIT_AS, limits->memory_mb * MIB}, {RLIMIT_NPROC, limits->max_processes}, {RLIMIT_FSIZE, limits->max_file_size_mb * MIB}};
    for (int i = 0; i < 3; i++) {
        struct rlimit rl = {(rlim_t)wanted[i].value, (rlim_t)wanted[i].value};
        if (wanted[i].value > 0 && setrlimit(wanted[i].resource, &rl) < 0) {
            failure[0] = 1;
            failure[1] = errno;
            goto fail;
        }
    }
    failure[0] = 2;
    if (cwd && *cwd && chdir(cwd) < 0) {
        failure[1] = errno;
        goto fail;
    }
    char path[PATH_MAX];
    failure[1] = find_executable(argv[0], env, path, sizeof path);
    if (failure[1] == 0) {
        execve(path, argv, envp);
        failure[1] = errno;
    }
fail:
    if (write(report, failure, sizeof failure) < 0) { /* the agent learns it from the exit */ }
    _exit(127);
}

static const char *script_dir = "/tmp/.corral";

/* Writes a python step's code to script_dir/step-{id}/main.py (agent._write_script). */
static int write_script(long long id, const char *code, size_t len, char *path, size_t size, char *error, size_t error_size) {
    char directory[PATH_MAX - 16];
    snprintf(directory, sizeof directory, "%s/step-%lld", script_dir, id);
    snprintf(path, size, "%s/main.py", directory);
    if (mkdir(directory, 0700) < 0 && errno != EEXIST) {
        snprintf(error, error_size, "could not run the step: [Errno %d] %s: '%s'", errno, strerror(errno), directory);
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    const char *at = code;
    while (fd >= 0 && len > 0) {
        ssize_t n = write(fd, at, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        at += n;
        len -= (size_t)n;
    }
    if (fd < 0 || len > 0) {
        snprintf(error, error_size, "could not run the step: [Errno %d] %s: '%s'", errno, strerror(errno), path);
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* A run request, decoded; -1: not as this agent takes it (the Python agent gets it). */
static int serve_run(const jval *req, long long id) {
    const jval *kind, *code, *argv_field, *env, *cwd, *limits_field;
    double timeout;
    long long cap;
    int with_stdin;
    process_limits limits = {0, 0, 0};
    if (field_str(req, "kind", &kind, 1) < 0 || kind == NULL) return -1;
    int shell = strcmp(kind->str, "shell") == 0, python = strcmp(kind->str, "python") == 0, argv_kind = strcmp(kind->str, "argv") == 0;
    if (!shell && !python && !argv_kind) return -1; /* typescript (its warm checker), or invalid */
    if (field_str(req, "code", &code, shell) < 0 || field_str_list(req, "argv", &argv_field) < 0 || field_env(req, "env", &env) < 0 ||
        field_str(req, "cwd", &cwd, 1) < 0 || field_float(req, "timeout", 60.0, &timeout) < 0 ||
        field_int(req, "max_output_bytes", MIB, &cap) < 0 || field_bool(req, "stdin", &with_stdin) < 0)
        return -1;
    limits_field = json_get(req, "limits");
    if (limits_field) {
        if (limits_field->type != J_OBJ || field_int(limits_field, "memory_mb", 0, &limits.memory_mb) < 0 ||
            field_int(limits_field, "max_processes", 0, &limits.max_processes) < 0 ||
            field_int(limits_field, "max_file_size_mb", 0, &limits.max_file_size_mb) < 0)
            return -1;
    }
    char script[PATH_MAX], error[PATH_MAX + 128];
    char *argv_buffer[4];
    char **argv = argv_buffer;
    if (shell) {
        argv_buffer[0] = "/bin/sh";
        argv_buffer[1] = "-c";
        argv_buffer[2] = code ? code->str : "";
        argv_buffer[3] = NULL;
    } else if (python) {
        if (write_script(id, code ? code->str : "", code ? code->len : 0, script, sizeof script, error, sizeof error) < 0) {
            send_failed(id, error);
            return 0;
        }
        argv_buffer[0] = PYTHON;
        argv_buffer[1] = script;
        argv_buffer[2] = NULL;
    } else {
        if (argv_field == NULL || argv_field->count == 0) {
            send_failed(id, "empty argv");
            return 0;
        }
        argv = calloc(argv_field->count + 1, sizeof *argv);
        if (argv == NULL) _exit(70);
        for (size_t i = 0; i < argv_field->count; i++) argv[i] = argv_field->items[i].str;
    }
    size_t env_count = env ? env->count : 0;
    char **envp = calloc(env_count + 1, sizeof *envp);
    for (size_t i = 0; envp && i < env_count; i++) {
        /* the last of a repeated name, as Python's dict keeps it */
        if (json_get(env, env->keys[i]) != &env->items[i]) continue;
        size_t n = env->key_lens[i] + env->items[i].len + 2;
        char *entry = malloc(n);
        if (entry) snprintf(entry, n, "%s=%s", env->keys[i], env->items[i].str);
        envp[i] = entry;
    }
    /* compact the skipped repeats */
    size_t kept_env = 0;
    for (size_t i = 0; envp && i < env_count; i++)
        if (envp[i]) envp[kept_env++] = envp[i];
    if (envp) envp[kept_env] = NULL;

    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, report[2] = {-1, -1};
    int ok = (with_stdin ? pipe2(in, O_CLOEXEC) : ((in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0 ? -1 : 0)) == 0;
    ok = ok && pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0 && pipe2(report, O_CLOEXEC) == 0;
    pid_t pid = -1;
    int failure[2] = {0, 0};
    if (ok) {
        pid = fork();
        if (pid == 0) {
            int fds[3] = {in[0], out[1], err[1]};
            become_step(report[1], fds, argv, envp, env, cwd ? cwd->str : NULL, &limits);
        }
    }
    int saved = errno;
    for (int *fd = (int[]){in[0], out[1], err[1], report[1]}, i = 0; i < 4; i++)
        if (fd[i] >= 0) close(fd[i]);
    if (pid > 0) {
        ssize_t n;
        do n = read(report[0], failure, sizeof failure); while (n < 0 && errno == EINTR);
        if (n != (ssize_t)sizeof failure) failure[0] = 0; /* exec'd: the pipe closed with nothing */
    }
    if (report[0] >= 0) close(report[0]);
    for (size_t i = 0; envp && envp[i]; i++) free(envp[i]);
    free(envp);
    if (argv != argv_buffer) {
        free(argv);
        argv = NULL;
    }
    if (!ok || pid < 0 || failure[0]) {
        if (pid > 0) waitpid(pid, NULL, 0);
        for (int *fd = (int[]){in[1], out[0], err[0]}, i = 0; i < 3; i++)
            if (fd[i] >= 0) close(fd[i]);
        if (failure[0] == 2) {
            const char *name = shell ? "/bin/sh" : python ? PYTHON : argv_field->items[0].str;
            snprintf(error, sizeof error, "could not start %s: %s", name, strerror(failure[1]));
        } else if (failure[0] == 1) {
            snprintf(error, sizeof error, "could not run the step: cannot set its limits: %s", strerror(failure[1]));
        } else {
            snprintf(error, sizeof error, "could not start the step: %s", strerror(ok ? saved : errno));
        }
        send_failed(id, error);
        return 0;
    }
    run *r = calloc(1, sizeof *r);
    if (r == NULL) _exit(70);
    r->id = id;
    r->pid = pid;
    r->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    r->pipes[0] = out[0];
    r->pipes[1] = err[0];
    r->cap = cap;
    r->deadline = now() + timeout;
    r->exited_at = -1;
    r->with_stdin = with_stdin;
    r->stdin_fd = with_stdin ? in[1] : -1;
    if (r->stdin_fd >= 0) fcntl(r->stdin_fd, F_SETFL, O_NONBLOCK);
    r->counters_found = cgroup_counters(r->counters_before);
    r->next = runs;
    runs = r;
    return 0;
}

/* binascii.a2b_base64, not strict: characters outside the alphabet are skipped, a complete
 * padding ends the data. Returns -1 where it raises (incorrect padding, a lone character). */
static int a2b_base64(const char *text, size_t len, buffer *out) {
    int quad = 0, pads = 0;
    unsigned left = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '=') {
            if (quad >= 2 && quad + ++pads >= 4) return 0;
            continue;
        }
        int v;
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == '+') v = 62;
        else if (c == '/') v = 63;
        else if (c >= 0x80) return -1; /* Python refuses a non-ASCII str outright */
        else continue;
        pads = 0;
        unsigned char byte;
        switch (quad) {
        case 0: quad = 1; left = (unsigned)v; break;
        case 1: quad = 2; byte = (unsigned char)(left << 2 | (unsigned)v >> 4); buf_add(out, &byte, 1); left = (unsigned)v & 0x0F; break;
        case 2: quad = 3; byte = (unsigned char)(left << 4 | (unsigned)v >> 2); buf_add(out, &byte, 1); left = (unsigned)v & 0x03; break;
        default: quad = 0; byte = (unsigned char)(left << 6 | (unsigned)v); buf_add(out, &byte, 1); left = 0; break;
        }
    }
    return quad == 0 ? 0 : -1;
}

static int serve_stdin(const jval *req, long long id) {
    long long target;
    const jval *data;
    int close_after;
    if (field_int(req, "target", 0, &target) < 0 || json_get(req, "target") == NULL || field_str(req, "data", &data, 0) < 0 ||
        field_bool(req, "close", &close_after) < 0)
        return -1;
    run *r = find_run(target);
    if (r == NULL && helper_runs(target)) return -1;
    buffer bytes = {0};
    char message[160];
    if (data && a2b_base64(data->str, data->len, &bytes) < 0) {
        send_error(id, "stdin data is not valid base64");
    } else if (r == NULL) {
        snprintf(message, sizeof message, "no run %lld is running", target);
        send_error(id, message);
    } else if (!r->with_stdin) {
        snprintf(message, sizeof message, "run %lld was not started with stdin", target);
        send_error(id, message);
    } else if ((long long)(r->stdin_queue.len - r->stdin_sent + bytes.len) > MAX_STDIN_QUEUED) {
        snprintf(message, sizeof message, "run %lld has %zu bytes of stdin not read yet; at most 4 MiB wait", target,
                 r->stdin_queue.len - r->stdin_sent);
        send_error(id, message);
    } else {
        if (r->stdin_fd >= 0 && !r->stdin_close) buf_add(&r->stdin_queue, bytes.data, bytes.len);
        if (close_after) r->stdin_close = 1;
        if (r->stdin_close && r->stdin_queue.len == r->stdin_sent) close_stdin(r);
        send_done(id);
    }
    buf_free(&bytes);
    return 0;
}

static int serve_signal(const jval *req, long long id) {
    long long target, number;
    if (json_get(req, "target") == NULL || json_get(req, "signal") == NULL || field_int(req, "target", 0, &target) < 0 ||
        field_int(req, "signal", 0, &number) < 0)
        return -1;
    run *r = find_run(target);
    if (r == NULL && helper_runs(target)) return -1;
    char message[160];
    sigset_t valid;
    sigfillset(&valid); /* Python's signal.valid_signals() */
    if (r == NULL) {
        snprintf(message, sizeof message, "no run %lld is running", target);
    } else if (number <= 0 || number > 64 || sigismember(&valid, (int)number) != 1) {
        snprintf(message, sizeof message, "unknown signal %lld", number);
    } else if (killpg(r->pid, (int)number) < 0) {
        if (errno == ESRCH) snprintf(message, sizeof message, "run %lld has ended", target);
        else snprintf(message, sizeof message, "%s: [Errno %d] %s", errno == EPERM ? "PermissionError" : "OSError", errno, strerror(errno));
    } else {
        send_done(id);
        return 0;
    }
    send_error(id, message);
    return 0;
}

static int serve_kill(const jval *req) {
    long long target;
    if (json_get(req, "target") == NULL || field_int(req, "target", 0, &target) < 0) return -1;
    run *r = find_run(target);
    if (r == NULL) return helper_runs(target) ? -1 : 0;
    r->kill_requested = 1;
    return 0;
}

static int serve_chdir(const jval *req, long long id) {
    const jval *path, *env;
    if (field_str(req, "path", &path, 1) < 0 || path == NULL || field_env(req, "env", &env) < 0) return -1;
    if (chdir(path->str) < 0) return -1; /* the Python agent says why, in its words */
    for (size_t i = 0; env && i < env->count; i++) setenv(env->keys[i], env->items[i].str, 1);
    if (helper.requests >= 0) { /* the helper follows: its file operations start from here */
        buffer b = {0};
        buf_fmt(&b, "{\"op\": \"chdir\", \"id\": %d, \"path\": ", INTERNAL_ID);
        buf_json_string(&b, path->str, path->len);
        buf_str(&b, ", \"env\": {");
        for (size_t i = 0; env && i < env->count; i++) {
            if (i) buf_str(&b, ", ");
            buf_json_string(&b, env->keys[i], env->key_lens[i]);
            buf_str(&b, ": ");
            buf_json_string(&b, env->items[i].str, env->items[i].len);
        }
        buf_str(&b, "}}\n");
        buf_add(&helper.outgoing, b.data, b.len);
        buf_free(&b);
    }
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL) snprintf(cwd, sizeof cwd, "%s", path->str);
    buffer b = {0};
    reply_head(&b, "chdir", id);
    buf_str(&b, ", \"path\": ");
    buf_json_string(&b, cwd, strlen(cwd));
    buf_str(&b, "}");
    send_line(&b);
    return 0;
}

static void handle_line(char *line, size_t len) {
    jval req;
    if (json_parse(line, len, &req) < 0) {
        helper_forward(line, len, NULL, NULL);
        return;
    }
    const jval *op = json_get(&req, "op"), *id_field = json_get(&req, "id");
    long long id = 0;
    int served = -1;
    if (req.type == J_OBJ && op && op->type == J_STR && (id_field == NULL || id_field->type == J_INT)) {
        id = id_field ? id_field->integer : 0;
        if (strcmp(op->str, "run") == 0) served = serve_run(&req, id);
        else if (strcmp(op->str, "kill") == 0) served = serve_kill(&req);
        else if (strcmp(op->str, "stdin") == 0) served = serve_stdin(&req, id);
        else if (strcmp(op->str, "signal") == 0) served = serve_signal(&req, id);
        else if (strcmp(op->str, "chdir") == 0) served = serve_chdir(&req, id);
    }
    if (served < 0) helper_forward(line, len, &req, op && op->type == J_STR ? op->str : NULL);
    json_free(&req);
}

/* --- the loop ------------------------------------------------------------------------------- */

static void kill_all_and_exit(void) {
    for (run *r = runs; r; r = r->next) kill_tree(r->pid);
    if (helper.requests >= 0) close(helper.requests); /* it takes its own steps down */
    _exit(0);
}

/* A run's next move by the clock: reap, time out or kill, end after its drain. */
static void check_run(run *r, double t) {
    if (r->exited_at < 0 && waitpid(r->pid, &r->status, WNOHANG) == r->pid) r->exited_at = t;
    if (r->exited_at < 0 && (t >= r->deadline || r->kill_requested)) {
        r->timed_out = !r->kill_requested;
        r->killed = r->kill_requested;
        kill_tree(r->pid);
        while (waitpid(r->pid, &r->status, 0) < 0 && errno == EINTR) {}
        r->exited_at = now();
    }
    if (r->exited_at >= 0 && ((r->pipes[0] < 0 && r->pipes[1] < 0) || now() - r->exited_at >= DRAIN_SECONDS)) finish_run(r);
}

static void read_pipe(run *r, int stream) {
    unsigned char chunk[READ_CHUNK];
    ssize_t n = read(r->pipes[stream], chunk, sizeof chunk);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    /* A step writing many small pieces (a line at a time) would make as many replies, each
       decoded by the executor: what more arrives within LINGER_MS joins this one (up to a
       chunk), so 80 MB of lines costs the executor a few thousand replies, not a million. */
    while (n > 0 && (size_t)n < sizeof chunk) {
        struct pollfd more = {.fd = r->pipes[stream], .events = POLLIN};
        if (poll(&more, 1, LINGER_MS) <= 0 || !(more.revents & POLLIN)) break;
        ssize_t m = read(r->pipes[stream], chunk + n, sizeof chunk - (size_t)n);
        if (m <= 0) break; /* EOF (or an error) is seen by the next read */
        n += m;
    }
    if (n <= 0) {
        close(r->pipes[stream]);
        r->pipes[stream] = -1;
        send_output(r, stream, (const unsigned char *)"", 0, 1);
        return;
    }
    if (r->kept[stream] < r->cap) send_output(r, stream, chunk, (size_t)n, 0);
    else r->truncated[stream] = 1;
}

static void write_stdin(run *r) {
    ssize_t n = write(r->stdin_fd, r->stdin_queue.data + r->stdin_sent, r->stdin_queue.len - r->stdin_sent);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n < 0) { /* the process closed its stdin or ended */
        close_stdin(r);
        return;
    }
    r->stdin_sent += (size_t)n;
    if (r->stdin_sent == r->stdin_queue.len) {
        r->stdin_queue.len = r->stdin_sent = 0;
        if (r->stdin_close) close_stdin(r);
    }
}

enum { SLOT_STDIN, SLOT_HELPER_OUT, SLOT_HELPER_IN, SLOT_RUN_OUT, SLOT_RUN_ERR, SLOT_RUN_EXIT, SLOT_RUN_STDIN, SLOT_DISCARD };

static void loop(void) {
    buffer input = {0};
    size_t cap = 0;
    struct pollfd *fds = NULL;
    struct { int kind; run *r; size_t index; } *slots = NULL;
    for (;;) {
        size_t count = 0, need = 3 + discarded_count;
        for (run *r = runs; r; r = r->next) need += 4;
        if (need > cap) {
            cap = need * 2;
            fds = realloc(fds, cap * sizeof *fds);
            slots = realloc(slots, cap * sizeof *slots);
            if (fds == NULL || slots == NULL) _exit(70);
        }
#define WATCH(fd_, events_, kind_, r_, index_) \
    do { fds[count] = (struct pollfd){(fd_), (events_), 0}; slots[count].kind = (kind_); slots[count].r = (r_); slots[count].index = (index_); count++; } while (0)
        WATCH(0, POLLIN, SLOT_STDIN, NULL, 0);
        if (helper.replies >= 0) WATCH(helper.replies, POLLIN, SLOT_HELPER_OUT, NULL, 0);
        if (helper.requests >= 0 && helper.outgoing.len > helper.outgoing_sent) WATCH(helper.requests, POLLOUT, SLOT_HELPER_IN, NULL, 0);
        double t = now(), wake = -1;
        for (run *r = runs; r; r = r->next) {
            for (int s = 0; s < 2; s++)
                if (r->pipes[s] >= 0) WATCH(r->pipes[s], POLLIN, s ? SLOT_RUN_ERR : SLOT_RUN_OUT, r, 0);
            if (r->exited_at < 0 && r->pidfd >= 0) WATCH(r->pidfd, POLLIN, SLOT_RUN_EXIT, r, 0);
            if (r->stdin_fd >= 0 && r->stdin_queue.len > r->stdin_sent) WATCH(r->stdin_fd, POLLOUT, SLOT_RUN_STDIN, r, 0);
            double due = r->exited_at >= 0 ? r->exited_at + DRAIN_SECONDS : r->pidfd >= 0 ? r->deadline : t + 0.05;
            if (wake < 0 || due < wake) wake = due;
        }
        for (size_t i = 0; i < discarded_count; i++) WATCH(discarded[i], POLLIN, SLOT_DISCARD, NULL, i);
#undef WATCH
        int timeout = -1;
        if (wake >= 0) timeout = wake <= t ? 0 : wake - t > 3600 ? 3600 * 1000 : (int)((wake - t) * 1000) + 1;
        int ready = poll(fds, count, timeout);
        if (ready < 0 && errno != EINTR) _exit(70);
        for (size_t i = 0; ready > 0 && i < count; i++) {
            if (!fds[i].revents) continue;
            run *r = slots[i].r;
            switch (slots[i].kind) {
            case SLOT_STDIN: {
                buf_reserve(&input, READ_CHUNK);
                ssize_t n = read(0, input.data + input.len, READ_CHUNK);
                if (n < 0 && (errno == EINTR || errno == EAGAIN)) break;
                if (n <= 0) kill_all_and_exit(); /* the executor went away: the steps go too */
                size_t start = input.len;
                input.len += (size_t)n;
                size_t line_start = 0;
                char *nl;
                while ((nl = memchr(input.data + start, '\n', input.len - start)) != NULL) {
                    size_t end = (size_t)(nl - input.data);
                    size_t k = line_start;
                    while (k < end && (input.data[k] == ' ' || input.data[k] == '\t' || input.data[k] == '\r')) k++;
                    if (k < end) handle_line(input.data + line_start, end - line_start);
                    line_start = end + 1;
                    start = line_start;
                }
                memmove(input.data, input.data + line_start, input.len - line_start);
                input.len -= line_start;
                break;
            }
            case SLOT_HELPER_OUT:
                if (helper.replies >= 0) helper_readable();
                break;
            case SLOT_HELPER_IN:
                if (helper.requests >= 0) helper_writable();
                break;
            case SLOT_RUN_OUT:
            case SLOT_RUN_ERR:
                read_pipe(r, slots[i].kind == SLOT_RUN_ERR);
                break;
            case SLOT_RUN_STDIN:
                if (r->stdin_fd >= 0) write_stdin(r);
                break;
            case SLOT_DISCARD: {
                char sink[READ_CHUNK];
                ssize_t n = read(fds[i].fd, sink, sizeof sink);
                if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
                    close(fds[i].fd);
                    discarded[slots[i].index] = -1;
                }
                break;
            }
            default: /* a pidfd: the check below reaps it */
                break;
            }
        }
        size_t kept = 0;
        for (size_t i = 0; i < discarded_count; i++)
            if (discarded[i] >= 0) discarded[kept++] = discarded[i];
        discarded_count = kept;
        t = now();
        for (run *r = runs, *next; r; r = next) {
            next = r->next;
            check_run(r, t);
        }
    }
}

/* --- start ---------------------------------------------------------------------------------- */

/* `--channel R,W`: the executor's pipes on those descriptors instead of stdio (bubblewrap: its
 * pid 1 then holds none of them); they become our stdin and stdout. */
static void take_channel(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i++) {
        int requests, replies;
        if (strcmp(argv[i], "--channel") != 0 || sscanf(argv[i + 1], "%d,%d", &requests, &replies) != 2) continue;
        int fds[2] = {requests, replies};
        for (int target = 0; target < 2; target++)
            if (fds[target] != target) {
                dup2(fds[target], target);
                close(fds[target]);
            }
        return;
    }
}

/* Steps are started with only their three descriptors: every other one is close-on-exec. */
static void close_inherited_fds(void) {
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL) return;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        int fd = atoi(entry->d_name);
        if (fd > 2 && fd != dirfd(dir)) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    closedir(dir);
}

static void make_script_dir(void) {
    const char *configured = getenv("CORRAL_AGENT_SCRIPT_DIR");
    if (configured && *configured) script_dir = configured;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", script_dir);
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            mkdir(path, 0777);
            *p = '/';
        }
    if (mkdir(path, 0700) < 0 && errno != EEXIST) fprintf(stderr, "corral agent: cannot make %s: %s\n", path, strerror(errno));
}

int main(int argc, char **argv) {
    /* The Python agent: our first argument (protocol.COMPILED_AGENT_COMMAND), else the one
     * beside this binary, found before we become undumpable. */
    if (argc > 1 && strncmp(argv[1], "--", 2) != 0) snprintf(agent_py, sizeof agent_py, "%s", argv[1]);
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) n = (ssize_t)snprintf(self, sizeof self, "%s", argv[0]);
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (!agent_py[0]) snprintf(agent_py, sizeof agent_py, "%.*s/agent.py", slash ? (int)(slash - self) : 1, slash ? self : ".");
    char *beside = strrchr(agent_py, '/');
    snprintf(helper_python, sizeof helper_python, "%.*s/corral-python3", beside ? (int)(beside - agent_py) : 1, beside ? agent_py : ".");
    /* Steps run as our uid: undumpable, they cannot ptrace us, and our /proc entries (fd/, mem)
     * are root's, so a step cannot write into the pipe that reports on it. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        fprintf(stderr, "corral agent: cannot protect itself from its steps: prctl(PR_SET_DUMPABLE, 0): %s\n", strerror(errno));
        return 70;
    }
    take_channel(argc, argv);
    signal(SIGINT, SIG_IGN);  /* a step must not stop the agent with signals sent to everyone */
    signal(SIGPIPE, SIG_IGN); /* a closed pipe is an error to handle: EPIPE */
    signal(SIGXFSZ, SIG_IGN);
    close_inherited_fds();
    struct rlimit no_core = {0, 0}; /* for the agent and, inherited, every step */
    setrlimit(RLIMIT_CORE, &no_core);
    make_script_dir();
    struct stat st;
    for (int fd = 0; fd < 2; fd++) /* a file chunk's line crosses in a few writes */
        if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES);
    buffer b = {0};
    buf_fmt(&b, "{\"type\": \"ready\", \"id\": 0, \"pid\": %d, \"protocol\": %d}", (int)getpid(), PROTOCOL_VERSION);
    send_line(&b);
    loop();
    return 0;
}
