"""Writes 16 MiB of sshd "Failed password" lines to /var/log/auth.log and
16 MiB of failed-login records to /var/log/btmp (utmp(5), x86_64 layout),
spread over the last day: a password-guessing storm for bench/entry.sh.
Run only inside the benchmark's private mount namespace (tmpfs /var/log)."""
import struct, time
now = int(time.time())
with open("/var/log/auth.log", "w") as f:
    n = 0
    t = now - 86400
    while f.tell() < 16 << 20:
        ts = time.strftime("%b %d %H:%M:%S", time.gmtime(t))
        f.write(f"{ts} bench sshd[{1000 + n % 30000}]: Failed password for root from 198.51.100.{n % 250} port {40000 + n % 20000} ssh2\n")
        n += 1
        t += 1 if n % 3 == 0 else 0
with open("/var/log/btmp", "wb") as f:
    rec = bytearray(384)
    for i in range((16 << 20) // 384):
        struct.pack_into("<h", rec, 0, 6)
        rec[44:48] = b"root"
        host = f"198.51.100.{i % 250}".encode()
        rec[76:76 + 32] = host.ljust(32, b"\0")
        struct.pack_into("<i", rec, 340, now - 86400 + i // 4)
        f.write(rec)
