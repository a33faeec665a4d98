/* An --exec-workers worker for Windows: reads plain-framed requests (a 4-byte big-endian
 * length, then the payload) on stdin and answers each with its payload in upper case (or
 * unchanged, given the argument "echo"), in the same framing on stdout, until stdin ends.
 * Given "sleep" it only sleeps for a minute: a command that outlives the server.
 * The Windows twin of tests/peers/upper_worker.py, for machines without Python. */
#include <ctype.h>
#include <fcntl.h>
#include <io.h>
#include <stdio.h>
#include <stdlib.h>
#include <windows.h>

static int read_exact(unsigned char *buf, size_t len)
{
    return fread(buf, 1, len, stdin) == len;
}

int main(int argc, char **argv)
{
    int echo = argc > 1 && argv[1][0] == 'e';
    if (argc > 1 && argv[1][0] == 's') {
        Sleep(60000);
        return 0;
    }
    unsigned char head[4];
    _setmode(_fileno(stdin), _O_BINARY);
    _setmode(_fileno(stdout), _O_BINARY);
    while (read_exact(head, 4)) {
        size_t len = ((size_t)head[0] << 24) | (head[1] << 16) | (head[2] << 8) | head[3];
        unsigned char *payload = malloc(len ? len : 1);
        if (!payload || !read_exact(payload, len))
            return 1;
        for (size_t i = 0; i < len && !echo; i++)
            payload[i] = (unsigned char)toupper(payload[i]);
        fwrite(head, 1, 4, stdout);
        fwrite(payload, 1, len, stdout);
        fflush(stdout);
        free(payload);
    }
    return 0;
}
