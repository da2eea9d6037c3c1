/*
 * libkrun_double.c is a TEST DOUBLE of libkrun's 1.x C ABI (libkrun.so.1),
 * built by the tests with the system C compiler into a shared library that
 * boxctl-plugin-libkrun loads in place of the real one. It runs no VM: it
 * implements the symbols the plugin uses, records every call with its
 * arguments, returns chosen errors on request, and on krun_start_enter runs
 * a stand-in guest on the host (a program serving the boxctl agent protocol
 * on the vsock-mapped unix socket) and exits the process with its code, as
 * the real krun_start_enter exits the process when the guest ends.
 *
 * Its settings come from the environment:
 *
 *   KRUN_DOUBLE_LOG    a file each call is appended to as one JSON line:
 *                      {"call":"krun_add_disk2","ctx":1,"block_id":"vda",...}
 *   KRUN_DOUBLE_FAIL   calls to fail, "name=errno[,name=errno...]": that call
 *                      returns -errno (after recording itself)
 *   KRUN_DOUBLE_GUEST  the stand-in guest's executable; krun_start_enter
 *                      fails with -EINVAL without one
 *   KRUN_DOUBLE_EXIT   when set, the process exits with this code once the
 *                      guest ended, whatever the guest's own code was
 *
 * The stand-in guest is given, in its environment:
 *   KRUN_DOUBLE_CMDLINE        the kernel command line of krun_set_kernel
 *   KRUN_DOUBLE_CONSOLE        the path of krun_set_console_output
 *   KRUN_DOUBLE_VSOCK_PORT     the port of krun_add_vsock_port2 (listen=true)
 *   KRUN_DOUBLE_VSOCK_PATH     its unix socket path, which the guest listens on
 *   KRUN_DOUBLE_SHUTDOWN_FD    the shutdown eventfd, when one was handed out
 *   KRUN_DOUBLE_NET_FD         the stream socket of krun_add_net_unixstream, when
 *                              one was given: the guest's ethernet link
 *
 * Like the real krun_start_enter it never returns once the VM runs: the
 * calling thread forks and execs the guest, waits for it and calls exit().
 * The guest dies with that thread (PR_SET_PDEATHSIG), so killing the
 * process kills the "VM". Symbols can be left out at build time with
 * -DOMIT_<symbol> (for example -DOMIT_krun_add_disk2), which is how the
 * tests see a library that lacks one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CTX 8

struct ctx {
	bool used;
	bool vm_config;
	bool kernel;
	char cmdline[8192];
	char console[4096];
	char vsock_path[4096];
	uint32_t vsock_port;
	int shutdown_fd;
	int net_fd;
};

static struct ctx ctxs[MAX_CTX];

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

/* record appends one call: fmt is a sequence of 's' (string), 'u' (unsigned),
 * 'b' (bool) and 'i' (int), each with a name and a value. */
static void record(const char *call, const char *fmt, ...)
{
	const char *path = getenv("KRUN_DOUBLE_LOG");
	if (!path)
		return;
	FILE *f = fopen(path, "a");
	if (!f)
		return;
	fprintf(f, "{\"call\":\"%s\"", call);
	va_list ap;
	va_start(ap, fmt);
	for (const char *p = fmt; *p; p++) {
		const char *name = va_arg(ap, const char *);
		fprintf(f, ",\"%s\":", name);
		switch (*p) {
		case 's': {
			const char *v = va_arg(ap, const char *);
			if (v)
				json_str(f, v);
			else
				fputs("null", f);
			break;
		}
		case 'u':
			fprintf(f, "%u", va_arg(ap, unsigned));
			break;
		case 'i':
			fprintf(f, "%d", va_arg(ap, int));
			break;
		case 'b':
			fputs(va_arg(ap, int) ? "true" : "false", f);
			break;
		case 'a': { /* a NULL-terminated string array */
			const char *const *v = va_arg(ap, const char *const *);
			if (!v) {
				fputs("null", f);
				break;
			}
			fputc('[', f);
			for (int i = 0; v[i]; i++) {
				if (i)
					fputc(',', f);
				json_str(f, v[i]);
			}
			fputc(']', f);
			break;
		}
		}
	}
	va_end(ap);
	fputs("}\n", f);
	fclose(f);
}

/* chosen_error returns the negative errno KRUN_DOUBLE_FAIL asks call to
 * fail with, or 0. */
static int chosen_error(const char *call)
{
	const char *spec = getenv("KRUN_DOUBLE_FAIL");
	size_t n = strlen(call);
	while (spec && *spec) {
		if (strncmp(spec, call, n) == 0 && spec[n] == '=')
			return -atoi(spec + n + 1);
		spec = strchr(spec, ',');
		if (spec)
			spec++;
	}
	return 0;
}

static struct ctx *get(uint32_t id)
{
	if (id >= MAX_CTX || !ctxs[id].used)
		return NULL;
	return &ctxs[id];
}

#define CHECK(call, id)                              \
	do {                                         \
		int e_ = chosen_error(call);         \
		if (e_)                              \
			return e_;                   \
		if (!get(id))                        \
			return -ENOENT;              \
	} while (0)

#ifndef OMIT_krun_create_ctx
int32_t krun_create_ctx(void)
{
	record("krun_create_ctx", "");
	int e = chosen_error("krun_create_ctx");
	if (e)
		return e;
	for (int i = 0; i < MAX_CTX; i++) {
		if (!ctxs[i].used) {
			memset(&ctxs[i], 0, sizeof ctxs[i]);
			ctxs[i].used = true;
			ctxs[i].shutdown_fd = -1;
			ctxs[i].net_fd = -1;
			return i;
		}
	}
	return -ENOMEM;
}
#endif

#ifndef OMIT_krun_free_ctx
int32_t krun_free_ctx(uint32_t id)
{
	record("krun_free_ctx", "u", "ctx", id);
	CHECK("krun_free_ctx", id);
	ctxs[id].used = false;
	return 0;
}
#endif

#ifndef OMIT_krun_set_vm_config
int32_t krun_set_vm_config(uint32_t id, uint8_t vcpus, uint32_t ram_mib)
{
	record("krun_set_vm_config", "uuu", "ctx", id, "num_vcpus", (unsigned)vcpus, "ram_mib", ram_mib);
	CHECK("krun_set_vm_config", id);
	if (vcpus == 0 || ram_mib == 0)
		return -EINVAL;
	ctxs[id].vm_config = true;
	return 0;
}
#endif

#ifndef OMIT_krun_add_disk2
int32_t krun_add_disk2(uint32_t id, const char *block_id, const char *path, uint32_t format, bool read_only)
{
	record("krun_add_disk2", "ussub", "ctx", id, "block_id", block_id, "disk_path", path, "disk_format", format,
	       "read_only", (int)read_only);
	CHECK("krun_add_disk2", id);
	if (format > 2 || access(path, R_OK) != 0)
		return -EINVAL;
	return 0;
}
#endif

#ifndef OMIT_krun_add_virtiofs
int32_t krun_add_virtiofs(uint32_t id, const char *tag, const char *path)
{
	record("krun_add_virtiofs", "uss", "ctx", id, "c_tag", tag, "c_path", path);
	CHECK("krun_add_virtiofs", id);
	if (!tag || !*tag || !path || access(path, R_OK | X_OK) != 0)
		return -EINVAL;
	return 0;
}
#endif

#ifndef OMIT_krun_add_virtiofs3
int32_t krun_add_virtiofs3(uint32_t id, const char *tag, const char *path, uint64_t shm_size, bool read_only)
{
	record("krun_add_virtiofs3", "ussub", "ctx", id, "c_tag", tag, "c_path", path, "shm_size", (unsigned)shm_size,
	       "read_only", (int)read_only);
	CHECK("krun_add_virtiofs3", id);
	if (!tag || !*tag || !path || access(path, R_OK | X_OK) != 0)
		return -EINVAL;
	return 0;
}
#endif

#ifndef OMIT_krun_set_kernel
int32_t krun_set_kernel(uint32_t id, const char *kernel, uint32_t format, const char *initramfs, const char *cmdline)
{
	record("krun_set_kernel", "ususs", "ctx", id, "kernel_path", kernel, "kernel_format", format, "initramfs",
	       initramfs, "cmdline", cmdline);
	CHECK("krun_set_kernel", id);
	if (access(kernel, R_OK) != 0 || (initramfs && access(initramfs, R_OK) != 0))
		return -EINVAL;
	snprintf(ctxs[id].cmdline, sizeof ctxs[id].cmdline, "%s", cmdline ? cmdline : "");
	ctxs[id].kernel = true;
	return 0;
}
#endif

#ifndef OMIT_krun_add_vsock_port2
int32_t krun_add_vsock_port2(uint32_t id, uint32_t port, const char *path, bool listen)
{
	record("krun_add_vsock_port2", "uusb", "ctx", id, "port", port, "filepath", path, "listen", (int)listen);
	CHECK("krun_add_vsock_port2", id);
	if (listen) {
		ctxs[id].vsock_port = port;
		snprintf(ctxs[id].vsock_path, sizeof ctxs[id].vsock_path, "%s", path);
	}
	return 0;
}
#endif

#ifndef OMIT_krun_set_console_output
int32_t krun_set_console_output(uint32_t id, const char *path)
{
	record("krun_set_console_output", "us", "ctx", id, "filepath", path);
	CHECK("krun_set_console_output", id);
	if (ctxs[id].console[0])
		return -EINVAL;
	snprintf(ctxs[id].console, sizeof ctxs[id].console, "%s", path);
	return 0;
}
#endif

#ifndef OMIT_krun_set_port_map
int32_t krun_set_port_map(uint32_t id, const char *const port_map[])
{
	record("krun_set_port_map", "ua", "ctx", id, "port_map", port_map);
	CHECK("krun_set_port_map", id);
	return 0;
}
#endif

#ifndef OMIT_krun_disable_implicit_vsock
int32_t krun_disable_implicit_vsock(uint32_t id)
{
	record("krun_disable_implicit_vsock", "u", "ctx", id);
	CHECK("krun_disable_implicit_vsock", id);
	return 0;
}
#endif

#ifndef OMIT_krun_add_vsock
int32_t krun_add_vsock(uint32_t id, uint32_t tsi_features)
{
	record("krun_add_vsock", "uu", "ctx", id, "tsi_features", tsi_features);
	CHECK("krun_add_vsock", id);
	return 0;
}
#endif

#ifndef OMIT_krun_add_net_unixstream
int32_t krun_add_net_unixstream(uint32_t id, const char *path, int fd, uint8_t *const mac, uint32_t features,
				uint32_t flags)
{
	char m[18] = "";
	if (mac)
		snprintf(m, sizeof m, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	record("krun_add_net_unixstream", "usisuu", "ctx", id, "c_path", path, "fd", fd, "c_mac", m, "features", features,
	       "flags", flags);
	CHECK("krun_add_net_unixstream", id);
	/* As the header says: a path or an open stream socket, not both. */
	struct stat st;
	if ((path != NULL) == (fd >= 0) || !mac)
		return -EINVAL;
	if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)))
		return -EINVAL;
	ctxs[id].net_fd = fd;
	return 0;
}
#endif

#ifndef OMIT_krun_get_shutdown_eventfd
int32_t krun_get_shutdown_eventfd(uint32_t id)
{
	record("krun_get_shutdown_eventfd", "u", "ctx", id);
	CHECK("krun_get_shutdown_eventfd", id);
	if (ctxs[id].shutdown_fd < 0)
		ctxs[id].shutdown_fd = eventfd(0, 0);
	return ctxs[id].shutdown_fd < 0 ? -errno : ctxs[id].shutdown_fd;
}
#endif

#ifndef OMIT_krun_start_enter
int32_t krun_start_enter(uint32_t id)
{
	record("krun_start_enter", "u", "ctx", id);
	CHECK("krun_start_enter", id);
	struct ctx *c = &ctxs[id];
	const char *guest = getenv("KRUN_DOUBLE_GUEST");
	if (!c->vm_config || !c->kernel || !guest)
		return -EINVAL;

	/* Everything the child needs is prepared before fork: the process has
	 * other threads (the Go runtime's), so the child may only exec. */
	char port[32], fd[32], netfd[32];
	snprintf(port, sizeof port, "%u", c->vsock_port);
	snprintf(fd, sizeof fd, "%d", c->shutdown_fd);
	setenv("KRUN_DOUBLE_CMDLINE", c->cmdline, 1);
	setenv("KRUN_DOUBLE_CONSOLE", c->console, 1);
	setenv("KRUN_DOUBLE_VSOCK_PORT", port, 1);
	setenv("KRUN_DOUBLE_VSOCK_PATH", c->vsock_path, 1);
	if (c->shutdown_fd >= 0)
		setenv("KRUN_DOUBLE_SHUTDOWN_FD", fd, 1);
	if (c->net_fd >= 0) {
		/* The caller's socket may be close-on-exec; the guest gets a dup. */
		int nfd = dup(c->net_fd);
		if (nfd < 0)
			return -errno;
		snprintf(netfd, sizeof netfd, "%d", nfd);
		setenv("KRUN_DOUBLE_NET_FD", netfd, 1);
	}
	char *argv[] = {(char *)guest, NULL};
	extern char **environ;
	char **envp = environ;

	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execve(guest, argv, envp);
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	const char *code = getenv("KRUN_DOUBLE_EXIT");
	if (code && *code)
		exit(atoi(code));
	if (WIFSIGNALED(status))
		exit(128 + WTERMSIG(status));
	exit(WEXITSTATUS(status));
}
#endif
