"""A client of loopdio's control socket (control=PATH): one command per line, one JSON reply
line per command.

  control_client.py PATH COMMAND...   sends the commands in one write, prints each reply line
"""
import socket
import sys
import time


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def read_lines(s, n, timeout=5.0):
    """Up to n reply lines, reading until they are there, EOF, or `timeout` seconds."""
    buf, deadline = b"", time.monotonic() + timeout
    while buf.count(b"\n") < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return [line.decode() for line in buf.split(b"\n")[:n] if line]


def ask(path, *commands, timeout=5.0):
    """Sends every command in one write; returns the reply lines."""
    s = connect(path)
    try:
        s.sendall("".join(c + "\n" for c in commands).encode())
        return read_lines(s, len(commands), timeout)
    finally:
        s.close()


if __name__ == "__main__":
    for line in ask(sys.argv[1], *sys.argv[2:]):
        print(line)
