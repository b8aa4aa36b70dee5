/*
 * The MMU workload the Linux initramfs runs (`/bin/workload`): fork and
 * exec of a few hundred processes, a pipe ping-pong between two processes
 * and mmap/munmap of a file. Each part prints one result line on stdout,
 * `workload: ... ok` or `workload: ... FAILED ...`; the last line is
 * `workload: done, N failed`, and the exit status is the number of failed
 * parts.
 *
 * Freestanding (no libc) so that the host's gcc builds it for x86-64 and,
 * with -m32, for i386 without 32-bit libraries:
 *     gcc [-m32] -static -nostdlib -ffreestanding -fno-pie -no-pie -O2
 * Timings come from CLOCK_MONOTONIC, so they are guest (virtual) time.
 */

typedef unsigned long ulong;

#if defined(__x86_64__)
enum {
	SYS_read = 0, SYS_write = 1, SYS_open = 2, SYS_close = 3,
	SYS_mmap = 9, SYS_munmap = 11, SYS_pipe = 22, SYS_fork = 57,
	SYS_execve = 59, SYS_exit = 60, SYS_wait4 = 61, SYS_ftruncate = 77,
	SYS_unlink = 87, SYS_clock_gettime = 228,
};
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long r;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(r)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return r;
}
#define MMAP_OFFSET(bytes) (bytes)
#elif defined(__i386__)
enum {
	SYS_exit = 1, SYS_fork = 2, SYS_read = 3, SYS_write = 4, SYS_open = 5,
	SYS_close = 6, SYS_unlink = 10, SYS_execve = 11, SYS_pipe = 42,
	SYS_munmap = 91, SYS_ftruncate = 93, SYS_wait4 = 114,
	SYS_mmap = 192 /* mmap2: the offset is in pages */,
	SYS_clock_gettime = 265,
};
long sys_arg6;
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	/* ebp carries the sixth argument: saved by hand (it may be the frame
	 * pointer) and loaded from a static (no register is left, and a stack
	 * operand would move with the push). Single-threaded, so no race. */
	long r;
	sys_arg6 = f;
	__asm__ volatile("push %%ebp\n\tmov sys_arg6, %%ebp\n\tint $0x80\n\tpop %%ebp"
			 : "=a"(r)
			 : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
			 : "memory");
	return r;
}
#define MMAP_OFFSET(bytes) ((bytes) / 4096)
#else
#error "x86-64 or i386 only"
#endif

#define sys3(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)

enum { O_RDWR = 2, O_CREAT = 0100, O_TRUNC = 01000 };
enum { PROT_READ = 1, PROT_WRITE = 2, MAP_SHARED = 1 };

static void put(const char *s)
{
	ulong n = 0;
	while (s[n])
		n++;
	sys3(SYS_write, 1, s, n);
}

static void put_num(ulong v)
{
	char b[24];
	int i = sizeof b - 1;
	b[i] = 0;
	do {
		b[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(b + i);
}

static ulong now_ms(void)
{
	long ts[2] = { 0, 0 }; /* struct timespec of this ABI: two longs */
	sys3(SYS_clock_gettime, 1 /* CLOCK_MONOTONIC */, ts, 0);
	return (ulong)ts[0] * 1000 + (ulong)ts[1] / 1000000;
}

static void report(const char *what, ulong count, const char *unit, ulong t0, int ok)
{
	put("workload: ");
	put(what);
	put(" ");
	put_num(count);
	put(" ");
	put(unit);
	put(" in ");
	put_num(now_ms() - t0);
	put(ok ? " ms ok\n" : " ms FAILED\n");
}

static int streq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

static char *self_path;

/* fork, exec this program with `noop` (it exits 7 at once), wait. */
static int fork_exec(ulong n)
{
	ulong t0 = now_ms(), good = 0;
	for (ulong i = 0; i < n; i++) {
		long pid = sys3(SYS_fork, 0, 0, 0);
		if (pid == 0) {
			char *argv[] = { self_path, "noop", 0 };
			char *envp[] = { 0 };
			sys3(SYS_execve, self_path, argv, envp);
			sys3(SYS_exit, 99, 0, 0);
		}
		int status = 0;
		if (pid > 0 && sys6(SYS_wait4, pid, (long)&status, 0, 0, 0, 0) == pid &&
		    (status & 0xffff) == (7 << 8))
			good++;
	}
	report("fork+exec", good, "processes", t0, good == n);
	return good == n;
}

/* The parent sends a counter byte, the child sends it back plus one. */
static int ping_pong(ulong rounds)
{
	int to_child[2], to_parent[2];
	if (sys3(SYS_pipe, to_child, 0, 0) < 0 || sys3(SYS_pipe, to_parent, 0, 0) < 0) {
		put("workload: pipe FAILED\n");
		return 0;
	}
	ulong t0 = now_ms();
	long pid = sys3(SYS_fork, 0, 0, 0);
	if (pid == 0) {
		unsigned char c;
		sys3(SYS_close, to_child[1], 0, 0); /* or the read never sees EOF */
		while (sys3(SYS_read, to_child[0], &c, 1) == 1) {
			c++;
			sys3(SYS_write, to_parent[1], &c, 1);
		}
		sys3(SYS_exit, 0, 0, 0);
	}
	ulong good = 0;
	for (ulong i = 0; i < rounds; i++) {
		unsigned char c = (unsigned char)i, back = 0;
		if (sys3(SYS_write, to_child[1], &c, 1) != 1 ||
		    sys3(SYS_read, to_parent[0], &back, 1) != 1)
			break;
		if (back == (unsigned char)(c + 1))
			good++;
	}
	sys3(SYS_close, to_child[1], 0, 0);
	int status = 0;
	sys6(SYS_wait4, pid, (long)&status, 0, 0, 0, 0);
	report("pipe ping-pong", good, "round trips", t0, good == rounds);
	return good == rounds;
}

/* Maps a file of `pages` pages `maps` times, adds 1 to a word of every
 * page through each mapping, unmaps; then reads the file back. */
static int map_file(ulong maps, ulong pages)
{
	const char *path = "/tmp/workload.map";
	static unsigned char page[4096];
	ulong t0 = now_ms();
	long fd = sys3(SYS_open, path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || sys3(SYS_ftruncate, fd, pages * 4096, 0) < 0) {
		put("workload: mmap file FAILED\n");
		return 0;
	}
	for (ulong m = 0; m < maps; m++) {
		long a = sys6(SYS_mmap, 0, (long)(pages * 4096), PROT_READ | PROT_WRITE,
			      MAP_SHARED, fd, MMAP_OFFSET(0));
		if (a < 0 && a > -4096)
			break;
		for (ulong p = 0; p < pages; p++)
			((volatile unsigned int *)(a + p * 4096))[p % 1024] += 1;
		sys3(SYS_munmap, a, pages * 4096, 0);
	}
	/* Every page's word must now read `maps`. */
	ulong good = 0;
	sys3(SYS_close, fd, 0, 0);
	fd = sys3(SYS_open, path, O_RDWR, 0);
	for (ulong p = 0; p < pages; p++) {
		if (sys3(SYS_read, fd, page, sizeof page) != sizeof page)
			break;
		if (((unsigned int *)page)[p % 1024] == maps)
			good++;
	}
	sys3(SYS_close, fd, 0, 0);
	sys3(SYS_unlink, path, 0, 0);
	report("mmap/munmap", maps, "maps of a 64-page file", t0, good == pages);
	return good == pages;
}

int main_c(long argc, char **argv)
{
	self_path = argv[0];
	if (argc > 1 && streq(argv[1], "noop"))
		return 7;
	int failed = 0;
	failed += !fork_exec(300);
	failed += !ping_pong(2000);
	failed += !map_file(200, 64);
	put("workload: done, ");
	put_num((ulong)failed);
	put(" failed\n");
	return failed;
}

/* The process entry: argc at the stack pointer, argv after it. */
__attribute__((used)) static void start_c(long *sp)
{
	long r = main_c(sp[0], (char **)(sp + 1));
	sys3(SYS_exit, r, 0, 0);
}

#if defined(__x86_64__)
__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start_c\n\thlt\n");
#else
__asm__(".globl _start\n_start:\n\tmov %esp, %eax\n\tand $-16, %esp\n\tsub $12, %esp\n\tpush %eax\n\tcall start_c\n\thlt\n");
#endif
