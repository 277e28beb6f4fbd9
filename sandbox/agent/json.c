/* See json.h. */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_DEPTH 32

typedef struct {
    const char *p, *end;
    int depth;
} parser;

static int parse_value(parser *ps, jval *out);

static void *xrealloc(void *ptr, size_t size) {
    void *grown = realloc(ptr, size ? size : 1);
    if (grown == NULL) {
        fputs("corral agent: out of memory\n", stderr);
        _exit(70);
    }
    return grown;
}

static void skip_space(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

/* The length of the valid UTF-8 sequence at s (1-4), or 0 when it is not one (what Python's
 * strict decoder refuses: overlongs, surrogates, beyond U+10FFFF). */
static size_t utf8_sequence(const unsigned char *s, size_t left) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return left >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3) return 0;
        unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4) return 0;
        unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        return s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80 ? 4 : 0;
    }
    return 0;
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static void put_utf8(buffer *b, unsigned cp) {
    char out[4];
    size_t n;
    if (cp < 0x80) { out[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    buf_add(b, out, n);
}

static int parse_string(parser *ps, char **out, size_t *out_len) {
    buffer b = {0};
    ps->p++; /* the opening quote */
    while (ps->p < ps->end) {
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') {
            ps->p++;
            buf_add(&b, "", 1);
            *out = b.data;
            *out_len = b.len - 1;
            return 0;
        }
        if (c < 0x20) break; /* strict: no raw control characters */
        if (c != '\\') {
            size_t n = utf8_sequence((const unsigned char *)ps->p, (size_t)(ps->end - ps->p));
            if (n == 0) break;
            buf_add(&b, ps->p, n);
            ps->p += n;
            continue;
        }
        if (ps->end - ps->p < 2) break;
        char e = ps->p[1];
        ps->p += 2;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char decoded[] = "\"\\/\b\f\n\r\t";
            buf_add(&b, &decoded[simple - "\"\\/bfnrt"], 1);
            continue;
        }
        unsigned cp, low;
        if (e != 'u' || ps->end - ps->p < 4 || hex4(ps->p, &cp) < 0) break;
        ps->p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) break; /* a lone low surrogate */
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || hex4(ps->p + 2, &low) < 0 || low < 0xDC00 || low > 0xDFFF)
                break; /* a lone high surrogate: not UTF-8 */
            ps->p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        put_utf8(&b, cp);
    }
    buf_free(&b);
    return -1;
}

static int parse_number(parser *ps, jval *out) {
    const char *start = ps->p, *q = ps->p;
    int is_float = 0;
    if (q < ps->end && *q == '-') q++;
    if (q >= ps->end) return -1;
    if (*q == '0') q++;
    else if (*q >= '1' && *q <= '9') { while (q < ps->end && *q >= '0' && *q <= '9') q++; }
    else return -1;
    if (q + 1 < ps->end && *q == '.' && q[1] >= '0' && q[1] <= '9') {
        is_float = 1;
        q++;
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        const char *r = q + 1;
        if (r < ps->end && (*r == '+' || *r == '-')) r++;
        if (r < ps->end && *r >= '0' && *r <= '9') {
            is_float = 1;
            while (r < ps->end && *r >= '0' && *r <= '9') r++;
            q = r;
        }
    }
    char text[64];
    if ((size_t)(q - start) >= sizeof text) return -1; /* beyond 64 bits, or a float's long spelling */
    memcpy(text, start, (size_t)(q - start));
    text[q - start] = 0;
    char *stop;
    if (is_float) {
        out->type = J_FLOAT;
        out->number = strtod(text, &stop);
        if (!isfinite(out->number)) return -1;
    } else {
        out->type = J_INT;
        errno = 0;
        out->integer = strtoll(text, &stop, 10);
        if (errno != 0) return -1;
    }
    ps->p = q;
    return 0;
}

static int parse_container(parser *ps, jval *out, int object) {
    if (++ps->depth > MAX_DEPTH) return -1;
    out->type = object ? J_OBJ : J_ARR;
    ps->p++;
    skip_space(ps);
    char close = object ? '}' : ']';
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return 0;
    }
    size_t cap = 0;
    for (;;) {
        if (out->count == cap) {
            cap = cap ? cap * 2 : 4;
            out->items = xrealloc(out->items, cap * sizeof *out->items);
            if (object) {
                out->keys = xrealloc(out->keys, cap * sizeof *out->keys);
                out->key_lens = xrealloc(out->key_lens, cap * sizeof *out->key_lens);
            }
        }
        if (object) {
            skip_space(ps);
            if (ps->p >= ps->end || *ps->p != '"') return -1;
            if (parse_string(ps, &out->keys[out->count], &out->key_lens[out->count]) < 0) return -1;
            skip_space(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(out->keys[out->count]);
                return -1;
            }
            ps->p++;
        }
        skip_space(ps);
        memset(&out->items[out->count], 0, sizeof *out->items);
        if (parse_value(ps, &out->items[out->count]) < 0) {
            if (object) free(out->keys[out->count]);
            json_free(&out->items[out->count]);
            return -1;
        }
        out->count++;
        skip_space(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            ps->depth--;
            return 0;
        }
        return -1;
    }
}

static int literal(parser *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return -1;
    ps->p += n;
    return 0;
}

static int parse_value(parser *ps, jval *out) {
    if (ps->p >= ps->end) return -1;
    switch (*ps->p) {
    case '"':
        out->type = J_STR;
        return parse_string(ps, &out->str, &out->len);
    case '{':
        return parse_container(ps, out, 1);
    case '[':
        return parse_container(ps, out, 0);
    case 't':
        out->type = J_BOOL;
        out->boolean = 1;
        return literal(ps, "true");
    case 'f':
        out->type = J_BOOL;
        return literal(ps, "false");
    case 'n':
        out->type = J_NULL;
        return literal(ps, "null");
    default:
        return parse_number(ps, out);
    }
}

int json_parse(const char *text, size_t len, jval *out) {
    parser ps = {text, text + len, 0};
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < len;) { /* the whole line is UTF-8, or Python refuses it */
        size_t n = utf8_sequence((const unsigned char *)text + i, len - i);
        if (n == 0) return -1;
        i += n;
    }
    skip_space(&ps);
    while (ps.end > ps.p && (ps.end[-1] == ' ' || ps.end[-1] == '\t' || ps.end[-1] == '\n' || ps.end[-1] == '\r')) ps.end--;
    if (parse_value(&ps, out) < 0 || ps.p != ps.end) {
        json_free(out);
        return -1;
    }
    return 0;
}

void json_free(jval *value) {
    if (value->type == J_STR) free(value->str);
    if (value->type == J_ARR || value->type == J_OBJ) {
        for (size_t i = 0; i < value->count; i++) {
            json_free(&value->items[i]);
            if (value->type == J_OBJ) free(value->keys[i]);
        }
        free(value->items);
        free(value->keys);
        free(value->key_lens);
    }
    memset(value, 0, sizeof *value);
}

const jval *json_get(const jval *object, const char *key) {
    if (object == NULL || object->type != J_OBJ) return NULL;
    size_t n = strlen(key);
    for (size_t i = object->count; i-- > 0;)
        if (object->key_lens[i] == n && memcmp(object->keys[i], key, n) == 0) return &object->items[i];
    return NULL;
}

/* --- output ------------------------------------------------------------------------------ */

void buf_reserve(buffer *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void buf_add(buffer *b, const void *data, size_t len) {
    buf_reserve(b, len);
    if (len) memcpy(b->data + b->len, data, len);
    b->len += len;
}

void buf_str(buffer *b, const char *text) { buf_add(b, text, strlen(text)); }

void buf_fmt(buffer *b, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int n = vsnprintf(NULL, 0, format, args);
    va_end(args);
    if (n < 0) return;
    buf_reserve(b, (size_t)n + 1);
    va_start(args, format);
    vsnprintf(b->data + b->len, (size_t)n + 1, format, args);
    va_end(args);
    b->len += (size_t)n;
}

void buf_json_string(buffer *b, const char *text, size_t len) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)text;
    buf_reserve(b, len + 2);
    b->data[b->len++] = '"';
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            size_t run = i;
            while (run < len && s[run] >= 0x20 && s[run] < 0x7F && s[run] != '"' && s[run] != '\\') run++;
            buf_add(b, s + i, run - i);
            i = run;
            continue;
        }
        char esc[12];
        switch (c) {
        case '"': buf_add(b, "\\\"", 2); i++; continue;
        case '\\': buf_add(b, "\\\\", 2); i++; continue;
        case '\n': buf_add(b, "\\n", 2); i++; continue;
        case '\r': buf_add(b, "\\r", 2); i++; continue;
        case '\t': buf_add(b, "\\t", 2); i++; continue;
        case '\b': buf_add(b, "\\b", 2); i++; continue;
        case '\f': buf_add(b, "\\f", 2); i++; continue;
        default: break;
        }
        unsigned cp;
        size_t n = c < 0x80 ? 1 : utf8_sequence(s + i, len - i);
        if (n == 0) { cp = 0xFFFD; n = 1; } /* not reached with valid input */
        else if (n == 1) cp = c;
        else if (n == 2) cp = (unsigned)(c & 0x1F) << 6 | (s[i + 1] & 0x3F);
        else if (n == 3) cp = (unsigned)(c & 0x0F) << 12 | (unsigned)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F);
        else cp = (unsigned)(c & 0x07) << 18 | (unsigned)(s[i + 1] & 0x3F) << 12 | (unsigned)(s[i + 2] & 0x3F) << 6 | (s[i + 3] & 0x3F);
        i += n;
        unsigned units[2] = {cp, 0};
        int count = 1;
        if (cp >= 0x10000) {
            units[0] = 0xD800 + ((cp - 0x10000) >> 10);
            units[1] = 0xDC00 + ((cp - 0x10000) & 0x3FF);
            count = 2;
        }
        for (int u = 0; u < count; u++) {
            esc[0] = '\\'; esc[1] = 'u';
            for (int k = 0; k < 4; k++) esc[2 + k] = hex[(units[u] >> (12 - 4 * k)) & 0xF];
            buf_add(b, esc, 6);
        }
    }
    buf_add(b, "\"", 1);
}

void buf_free(buffer *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* --- bytes to text ------------------------------------------------------------------------ */

/* How many bytes from s form the longest prefix of a valid sequence (the "maximal subpart"
 * Python replaces with one U+FFFD), given at most `left` bytes; *complete is set when they
 * form a whole valid sequence. */
static size_t utf8_prefix(const unsigned char *s, size_t left, int *complete) {
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    *complete = 0;
    if (c < 0x80) { *complete = 1; return 1; }
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) { need = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 1; /* never a start byte: one U+FFFD for it alone */
    size_t i = 1;
    for (; i < need && i < left; i++) {
        unsigned char first_lo = i == 1 ? lo : 0x80, first_hi = i == 1 ? hi : 0xBF;
        if (s[i] < first_lo || s[i] > first_hi) return i;
    }
    if (i == need) *complete = 1;
    return i;
}

void utf8_replace(buffer *out, unsigned char *held, size_t *held_len, const unsigned char *data, size_t len, int final) {
    unsigned char joined[8];
    /* Complete what the last call held, with the first bytes of this one. */
    while (*held_len > 0) {
        size_t take = len < 4 - *held_len ? len : 4 - *held_len;
        memcpy(joined, held, *held_len);
        memcpy(joined + *held_len, data, take);
        int complete;
        size_t n = utf8_prefix(joined, *held_len + take, &complete);
        if (!complete && n == *held_len + take && !final) { /* still incomplete: hold on */
            memcpy(held, joined, n);
            *held_len = n;
            return;
        }
        if (complete) buf_add(out, joined, n);
        else buf_add(out, "\xEF\xBF\xBD", 3);
        size_t used = n - *held_len; /* bytes of `data` consumed (n >= held_len) */
        if (n < *held_len) { /* the held bytes were themselves a maximal subpart shorter than held */
            memmove(held, held + n, *held_len - n);
            *held_len -= n;
            continue;
        }
        *held_len = 0;
        data += used;
        len -= used;
    }
    size_t i = 0;
    while (i < len) {
        size_t run = i;
        while (run < len && data[run] < 0x80) run++;
        buf_add(out, data + i, run - i);
        i = run;
        if (i >= len) break;
        int complete;
        size_t n = utf8_prefix(data + i, len - i, &complete);
        if (complete) buf_add(out, data + i, n);
        else if (i + n == len && !final) { /* may complete in the next chunk */
            memcpy(held, data + i, n);
            *held_len = n;
            return;
        } else buf_add(out, "\xEF\xBF\xBD", 3);
        i += n;
    }
}
