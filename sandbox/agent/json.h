/* JSON for the agent protocol's lines: a parser into a small tree, and an output buffer that
 * writes JSON the way the Python agent's encoder does (", " / ": " separators, ASCII only), so
 * that both agents' replies are the same bytes. */
#ifndef CORRAL_AGENT_JSON_H
#define CORRAL_AGENT_JSON_H

#include <stddef.h>

typedef enum { J_NULL, J_BOOL, J_INT, J_FLOAT, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
    jtype type;
    int boolean;
    long long integer;
    double number;
    char *str; /* J_STR: UTF-8, NUL-terminated, may hold NULs (see len) */
    size_t len;
    struct jval *items; /* J_ARR: values; J_OBJ: values, keys in keys[] */
    char **keys;
    size_t *key_lens;
    size_t count;
} jval;

/* Parses one line. Returns 0 and fills *out, or -1 when the line is not something this parser
 * takes as it is (not JSON, invalid UTF-8, a lone surrogate, an integer beyond 64 bits,
 * NaN/Infinity, nesting deeper than it goes): the caller hands such a line to the Python agent,
 * whose decoder says what is wrong with it. */
int json_parse(const char *text, size_t len, jval *out);
void json_free(jval *value);

/* The value of `key` in an object (the last one, as Python's json keeps), or NULL. */
const jval *json_get(const jval *object, const char *key);

typedef struct {
    char *data;
    size_t len, cap;
} buffer;

void buf_reserve(buffer *b, size_t more);
void buf_add(buffer *b, const void *data, size_t len);
void buf_str(buffer *b, const char *text);
void buf_fmt(buffer *b, const char *format, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string of UTF-8 text (valid UTF-8: see utf8_replace), ASCII-escaped as Python does. */
void buf_json_string(buffer *b, const char *text, size_t len);
void buf_free(buffer *b);

/* Valid UTF-8 from bytes, as Python's incremental "utf-8"/"replace" decoder gives it: each
 * invalid sequence becomes U+FFFD; unless `final`, an incomplete sequence at the end is kept in
 * held[0..*held_len) for the next call (it holds at most 3 bytes). */
void utf8_replace(buffer *out, unsigned char *held, size_t *held_len, const unsigned char *data, size_t len, int final);

#endif
