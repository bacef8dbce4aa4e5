#include "core/files/cnfxml.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <expat.h>
#include <openssl/bytestring.h>
#include <openssl/mem.h>

#include "core/base/error.h"
#include "core/base/phone.h"

/* Top-level children of <device> that capstan writes or copies. */
enum { N_CAPF_AUTH_MODE, N_CAPF_LIST, N_CERT_HASH, N_ENCR_CONFIG, N_IP_MODE, N_LOAD_INFO, N_NAMES };
static const char *const kNames[N_NAMES] = {
    "capfAuthMode", "capfList", "certHash", "encrConfig", "ipAddressMode", "loadInformation",
};

/* Occurrences of one managed element kept per document; more is refused
 * (no real configuration repeats them). */
#define MAX_OCC 16

typedef struct {
  size_t start, end; /* [start, end) bytes of the element, tags included */
} span_t;

typedef struct {
  XML_Parser p;
  int depth;
  int stopped; /* a handler refused the document; |err| says why */
  char *err;
  size_t errlen;
  span_t root_start_tag;
  size_t root_end_tag; /* offset of "</device>"; unused if self-closing */
  int root_self_closing;
  int has_decl;
  span_t decl;
  int cur; /* kNames index of the open top-level child, or -1 */
  size_t cur_start;
  span_t occ[N_NAMES][MAX_OCC];
  size_t n_occ[N_NAMES];
} scan_t;

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (err == NULL || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static void refuse(scan_t *s, const char *fmt, const char *arg) {
  if (s->stopped) return;
  char msg[160];
  snprintf(msg, sizeof(msg), fmt, arg);
  set_err(s->err, s->errlen, "line %lu: %s", (unsigned long)XML_GetCurrentLineNumber(s->p), msg);
  s->stopped = 1;
  XML_StopParser(s->p, XML_FALSE);
}

/* Current event's byte span; expat reports offsets from the start of the
 * input since the whole document is parsed in one call. */
static span_t event_span(scan_t *s) {
  XML_Index i = XML_GetCurrentByteIndex(s->p);
  int n = XML_GetCurrentByteCount(s->p);
  span_t sp = {0, 0};
  if (i >= 0 && n >= 0) {
    sp.start = (size_t)i;
    sp.end = (size_t)i + (size_t)n;
  }
  return sp;
}

static void on_start(void *ud, const XML_Char *name, const XML_Char **attrs) {
  scan_t *s = ud;
  (void)attrs;
  if (s->stopped) return;
  if (s->depth == 0) {
    if (strcmp(name, "device") != 0) {
      char shown[72];
      snprintf(shown, sizeof(shown), "%.64s", name);
      refuse(s, "root element is <%s>, expected <device>", shown);
      return;
    }
    s->root_start_tag = event_span(s);
  } else if (s->depth == 1) {
    s->cur = -1;
    for (int i = 0; i < N_NAMES; i++)
      if (strcmp(name, kNames[i]) == 0) s->cur = i;
    s->cur_start = event_span(s).start;
  }
  s->depth++;
}

static void on_end(void *ud, const XML_Char *name) {
  scan_t *s = ud;
  (void)name;
  if (s->stopped) return;
  s->depth--;
  span_t sp = event_span(s);
  if (s->depth == 1 && s->cur >= 0) {
    if (s->n_occ[s->cur] == MAX_OCC) {
      refuse(s, "too many <%s> elements", kNames[s->cur]);
      return;
    }
    span_t e = {s->cur_start, sp.end};
    s->occ[s->cur][s->n_occ[s->cur]++] = e;
    s->cur = -1;
  } else if (s->depth == 0) {
    /* For <device/>, expat reports the end event as an empty span right
     * after the start tag's token. */
    s->root_self_closing = sp.start == sp.end && sp.start == s->root_start_tag.end;
    s->root_end_tag = sp.start;
  }
}

static void on_doctype(void *ud, const XML_Char *name, const XML_Char *sysid, const XML_Char *pubid,
                       int has_internal_subset) {
  (void)name;
  (void)sysid;
  (void)pubid;
  (void)has_internal_subset;
  refuse(ud, "%s", "DOCTYPE not allowed");
}

static void on_decl(void *ud, const XML_Char *version, const XML_Char *encoding, int standalone) {
  scan_t *s = ud;
  (void)version;
  (void)standalone;
  if (s->stopped) return;
  /* capstan splices ASCII into the document's bytes: only ASCII-compatible
   * single-byte or UTF-8 encodings keep that valid. */
  if (encoding != NULL && strcasecmp(encoding, "UTF-8") != 0 &&
      strcasecmp(encoding, "US-ASCII") != 0 && strcasecmp(encoding, "ISO-8859-1") != 0) {
    char shown[40];
    snprintf(shown, sizeof(shown), "%.32s", encoding);
    refuse(s, "encoding %s not supported (use UTF-8)", shown);
    return;
  }
  s->has_decl = 1;
  s->decl = event_span(s);
}

/* Parses |xml| into |s|. */
static int scan(const uint8_t *xml, size_t len, scan_t *s, char *err, size_t errlen) {
  memset(s, 0, sizeof(*s));
  s->err = err;
  s->errlen = errlen;
  s->cur = -1;
  if (err != NULL && errlen > 0) err[0] = '\0';
  if (xml == NULL && len > 0) {
    set_err(err, errlen, "line 1: no document");
    return CAPSTAN_EINVAL;
  }
  if (len > CAPSTAN_CNFXML_MAX) {
    set_err(err, errlen, "line 1: document larger than %u bytes", CAPSTAN_CNFXML_MAX);
    return CAPSTAN_EINVAL;
  }
  /* UTF-16 (BOM or NUL bytes) would parse but cannot be spliced as bytes. */
  if (len >= 2 && ((xml[0] == 0xFE && xml[1] == 0xFF) || (xml[0] == 0xFF && xml[1] == 0xFE))) {
    set_err(err, errlen, "line 1: UTF-16 not supported (use UTF-8)");
    return CAPSTAN_EINVAL;
  }
  s->p = XML_ParserCreate(NULL);
  if (s->p == NULL) return CAPSTAN_ENOMEM;
  XML_SetUserData(s->p, s);
  XML_SetElementHandler(s->p, on_start, on_end);
  XML_SetStartDoctypeDeclHandler(s->p, on_doctype);
  XML_SetXmlDeclHandler(s->p, on_decl);
  int rc = 0;
  if (XML_Parse(s->p, (const char *)(xml != NULL ? xml : (const uint8_t *)""), (int)len, 1) !=
      XML_STATUS_OK) {
    enum XML_Error code = XML_GetErrorCode(s->p);
    if (code == XML_ERROR_NO_MEMORY) {
      rc = CAPSTAN_ENOMEM;
    } else {
      rc = CAPSTAN_EINVAL;
      if (!s->stopped)
        set_err(err, errlen, "line %lu: %s", (unsigned long)XML_GetCurrentLineNumber(s->p),
                XML_ErrorString(code));
    }
  }
  XML_ParserFree(s->p);
  s->p = NULL;
  return rc;
}

int capstan_cnfxml_validate(const uint8_t *xml, size_t len, char *err, size_t errlen) {
  scan_t s;
  return scan(xml, len, &s, err, errlen);
}

/* ---- Writing ------------------------------------------------------------ */

static int add_str(CBB *cbb, const char *s) {
  return CBB_add_bytes(cbb, (const uint8_t *)s, strlen(s));
}

static int add_escaped(CBB *cbb, const char *s) {
  for (; *s != '\0'; s++) {
    const char *rep = NULL;
    switch (*s) {
      case '&':
        rep = "&amp;";
        break;
      case '<':
        rep = "&lt;";
        break;
      case '>':
        rep = "&gt;";
        break;
      case '"':
        rep = "&quot;";
        break;
      case '\'':
        rep = "&apos;";
        break;
    }
    if (rep != NULL ? !add_str(cbb, rep) : !CBB_add_u8(cbb, (uint8_t)*s)) return 0;
  }
  return 1;
}

/* Writes the managed element |which| for |p|. */
static int add_element(CBB *cbb, int which, const capstan_cnfxml_params_t *p) {
  char num[16];
  switch (which) {
    case N_CAPF_AUTH_MODE:
      snprintf(num, sizeof(num), "%d", p->auth_mode);
      return add_str(cbb, "<capfAuthMode>") && add_str(cbb, num) && add_str(cbb, "</capfAuthMode>");
    case N_CAPF_LIST:
      snprintf(num, sizeof(num), "%u", (unsigned)p->capf_port);
      return add_str(cbb, "<capfList><capf><phonePort>") && add_str(cbb, num) &&
             add_str(cbb, "</phonePort><processNodeName>") && add_escaped(cbb, p->capf_host) &&
             add_str(cbb, "</processNodeName></capf></capfList>");
    case N_CERT_HASH:
      return add_str(cbb, "<certHash>") && add_str(cbb, p->cert_hash ? p->cert_hash : "") &&
             add_str(cbb, "</certHash>");
    case N_ENCR_CONFIG:
      return add_str(
          cbb, p->encr_config ? "<encrConfig>true</encrConfig>" : "<encrConfig>false</encrConfig>");
    default:
      return 0;
  }
}

static int check_hash(const char *h, char *err, size_t errlen) {
  if (h == NULL || h[0] == '\0') return 0;
  size_t n = strlen(h);
  for (size_t i = 0; i < n; i++)
    if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) n = 0;
  if (n != 32) {
    set_err(err, errlen, "certHash must be 32 lower-case hex digits or empty");
    return CAPSTAN_EINVAL;
  }
  return 0;
}

/* Moves the CBB's bytes into a malloc'd, NUL-terminated buffer; the CBB
 * is finished or cleaned up either way. */
static int finish_doc(CBB *cbb, uint8_t **out, size_t *out_len) {
  uint8_t *b = NULL;
  size_t n = 0;
  if (!CBB_add_u8(cbb, 0) || !CBB_finish(cbb, &b, &n)) {
    CBB_cleanup(cbb);
    return CAPSTAN_ENOMEM;
  }
  *out = malloc(n);
  if (*out == NULL) {
    OPENSSL_free(b);
    return CAPSTAN_ENOMEM;
  }
  memcpy(*out, b, n);
  OPENSSL_free(b);
  *out_len = n - 1;
  return 0;
}

typedef struct {
  size_t start, end; /* bytes of the input replaced */
  int which;         /* element written, or -1 for a deletion */
} edit_t;

static int cmp_edit(const void *a, const void *b) {
  const edit_t *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

int capstan_cnfxml_complete(const uint8_t *base, size_t len, const capstan_cnfxml_params_t *p,
                            uint8_t **out, size_t *out_len, char *err, size_t errlen) {
  *out = NULL;
  *out_len = 0;
  if (err != NULL && errlen > 0) err[0] = '\0';
  if (p == NULL || p->auth_mode < CAPSTAN_AUTH_MODE_MIN || p->auth_mode > CAPSTAN_AUTH_MODE_MAX) {
    set_err(err, errlen, "capfAuthMode must be 0 to 4");
    return CAPSTAN_EINVAL;
  }
  if (p->capf_host == NULL || p->capf_host[0] == '\0' ||
      strlen(p->capf_host) > CAPSTAN_CNFXML_MAX_HOST) {
    set_err(err, errlen, "CAPF host name missing or longer than %u bytes", CAPSTAN_CNFXML_MAX_HOST);
    return CAPSTAN_EINVAL;
  }
  for (const char *c = p->capf_host; *c != '\0'; c++) {
    if ((unsigned char)*c < 0x20 || *c == 0x7f) {
      set_err(err, errlen, "CAPF host name has control characters");
      return CAPSTAN_EINVAL;
    }
  }
  if (check_hash(p->cert_hash, err, errlen) != 0) return CAPSTAN_EINVAL;

  scan_t s;
  int rc = scan(base, len, &s, err, errlen);
  if (rc != 0) return rc;

  /* Edits in document order: the first occurrence of each managed element is
   * replaced, later ones deleted. */
  edit_t edits[4 * MAX_OCC];
  size_t n_edits = 0;
  int missing[4] = {0, 0, 0, 0};
  for (int w = 0; w < 4; w++) {
    if (s.n_occ[w] == 0) missing[w] = 1;
    for (size_t i = 0; i < s.n_occ[w]; i++) {
      edit_t e = {s.occ[w][i].start, s.occ[w][i].end, i == 0 ? w : -1};
      edits[n_edits++] = e;
    }
  }
  qsort(edits, n_edits, sizeof(edits[0]), cmp_edit);

  CBB cbb;
  if (!CBB_init(&cbb, len + 512)) return CAPSTAN_ENOMEM;
  size_t pos = 0;
  rc = CAPSTAN_ENOMEM;
  for (size_t i = 0; i < n_edits; i++) {
    if (!CBB_add_bytes(&cbb, base + pos, edits[i].start - pos)) goto err;
    if (edits[i].which >= 0 && !add_element(&cbb, edits[i].which, p)) goto err;
    pos = edits[i].end;
  }
  /* Insertion point: before </device>, or inside a self-closing <device/>
   * whose "/>" becomes ">...</device>". */
  size_t ins = s.root_self_closing ? s.root_start_tag.end - 2 : s.root_end_tag;
  if (!CBB_add_bytes(&cbb, base + pos, ins - pos)) goto err;
  pos = ins;
  /* Indent like a line of its own when </device> starts a line. */
  int own_line = s.root_self_closing || (ins > 0 && base[ins - 1] == '\n');
  /* Keep the document's line endings. */
  const char *eol = ins > 1 && base[ins - 1] == '\n' && base[ins - 2] == '\r' ? "\r\n" : "\n";
  if (s.root_self_closing && !add_str(&cbb, ">\n")) goto err;
  for (int w = 0; w < 4; w++) {
    if (!missing[w]) continue;
    if ((own_line && !add_str(&cbb, "  ")) || !add_element(&cbb, w, p) ||
        (own_line && !add_str(&cbb, eol)))
      goto err;
  }
  if (s.root_self_closing) {
    if (!add_str(&cbb, "</device>")) goto err;
    pos = s.root_start_tag.end;
  }
  if (!CBB_add_bytes(&cbb, base + pos, len - pos)) goto err;
  rc = finish_doc(&cbb, out, out_len);
  if (rc != 0) return rc;
  /* What we wrote is well-formed by construction; checking costs one parse
   * and catches a bug before a phone sees it. */
  if (capstan_cnfxml_validate(*out, *out_len, err, errlen) != 0) {
    free(*out);
    *out = NULL;
    *out_len = 0;
    return CAPSTAN_EINVAL;
  }
  return 0;
err:
  CBB_cleanup(&cbb);
  return rc;
}

int capstan_cnfxml_partial(const uint8_t *full, size_t len, const char *cert_hash, uint8_t **out,
                           size_t *out_len, char *err, size_t errlen) {
  *out = NULL;
  *out_len = 0;
  if (err != NULL && errlen > 0) err[0] = '\0';
  if (check_hash(cert_hash, err, errlen) != 0) return CAPSTAN_EINVAL;
  scan_t s;
  int rc = scan(full, len, &s, err, errlen);
  if (rc != 0) return rc;
  static const int kCopied[] = {N_IP_MODE, N_LOAD_INFO, N_CAPF_AUTH_MODE, N_CAPF_LIST};
  CBB cbb;
  if (!CBB_init(&cbb, 1024)) return CAPSTAN_ENOMEM;
  if (s.has_decl && (!CBB_add_bytes(&cbb, full + s.decl.start, s.decl.end - s.decl.start) ||
                     !add_str(&cbb, "\n")))
    goto err;
  if (!add_str(&cbb, "<device>\n  <fullConfig>false</fullConfig>\n")) goto err;
  for (size_t i = 0; i < sizeof(kCopied) / sizeof(kCopied[0]); i++) {
    int w = kCopied[i];
    if (s.n_occ[w] == 0) continue;
    const span_t *sp = &s.occ[w][0];
    if (!add_str(&cbb, "  ") || !CBB_add_bytes(&cbb, full + sp->start, sp->end - sp->start) ||
        !add_str(&cbb, "\n"))
      goto err;
  }
  if (!add_str(&cbb, "  <certHash>") || !add_str(&cbb, cert_hash ? cert_hash : "") ||
      !add_str(&cbb, "</certHash>\n  <encrConfig>true</encrConfig>\n</device>\n"))
    goto err;
  return finish_doc(&cbb, out, out_len);
err:
  CBB_cleanup(&cbb);
  return CAPSTAN_ENOMEM;
}

static const char kDefaultBase[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<device>\n"
    "  <!-- default base configuration from capstan: the operator gave none for this device;"
    " capstan adds the CAPF and security elements -->\n"
    "</device>\n";

const char *capstan_cnfxml_default_base(size_t *len) {
  if (len != NULL) *len = sizeof(kDefaultBase) - 1;
  return kDefaultBase;
}
