"""The results page's label form: what its section shows, the CSRF token that binds a form to its result and to
this run of the daemon, and the POST that records a label (origin, media type, CSRF, the write password, then the
daemon's ledger). ``LabelForm`` is a part of ``site.ResultsSite``, which holds the state it reads (``cfg``,
``ledger``, ``writer``, ``labeller``, ``_csrf_key``) and renders the result page it answers with."""

from __future__ import annotations

import hmac
import logging
import time
from urllib.parse import parse_qsl, urlsplit

from monitor.kinds import LabelKind, State, Verdict
from monitor.ledger import LABEL_KINDS, NOTE_CHARS, WHO_CHARS, LabelError, Row
from monitor.web.auth import Locked
from monitor.web.server import Response, text

log = logging.getLogger("monitor.web.site")  # one logger for everything the results page says

CSRF_SECONDS = 8 * 3600  # a label form stays valid this long (a shift); a restart of the daemon expires it too


class LabelForm:
    def _labels(self, r: Row, error: str = "", form: dict | None = None, saved: bool = False) -> dict | None:
        """What the label section shows (``_labels.html``); None: no section (the image was not scored)."""
        if r.state != State.DONE:
            return None
        out = {"given": self.ledger.labels(r.id), "saved": saved, "form": self.writer is not None}
        if self.writer is not None:
            form = form or {}
            out.update(error=error, csrf=self.csrf_token(r.id), who_chars=WHO_CHARS, note_chars=NOTE_CHARS,
                       kinds=[k for k in LABEL_KINDS if k != LabelKind.FALSE_ALARM or r.verdict == Verdict.DEFECT],
                       want=form.get("kind"),  # nothing chosen in advance: the operator says which
                       by=form.get("by", ""), note=form.get("note", ""))
        return out

    def csrf_token(self, row_id: int, now: float | None = None) -> str:
        issued = str(int(now if now is not None else time.time()))
        return f"{issued}.{self._csrf_mac(row_id, issued)}"

    def _csrf_mac(self, row_id: int, issued: str) -> str:
        return hmac.new(self._csrf_key, f"label:{row_id}:{issued}".encode(), "sha256").hexdigest()[:40]

    def _csrf_ok(self, row_id: int, token: str) -> bool:
        issued, _, mac = token.partition(".")
        if not (issued.isascii() and issued.isdigit() and len(issued) <= 12):
            return False
        return (hmac.compare_digest(mac.encode(), self._csrf_mac(row_id, issued).encode())
                and 0 <= time.time() - int(issued) <= CSRF_SECONDS)

    def post_label(self, row_id: int, headers, body: bytes, client: str = "") -> Response:
        """A label from the result page's form: checks, then the daemon's ledger writes it; 303 back to the page."""
        if self.writer is None:
            return text(403, "403 forbidden: labelling from the results page is off (set web.write_password_hash)")
        site = headers.get("Sec-Fetch-Site")
        origin = headers.get("Origin")
        # this server as the browser reached it: its scheme and Host, or web.external_url behind a proxy that
        # rewrites Host (scheme included: http://host is another origin than https://host)
        scheme = "https" if self.cfg.certfile else "http"
        ours = {f"{scheme}://{headers.get('Host')}" if headers.get("Host") else None}
        if self.cfg.external_url:
            ext = urlsplit(self.cfg.external_url)
            ours.add(f"{ext.scheme}://{ext.netloc}")
        given = urlsplit(origin) if origin else None
        if site not in (None, "same-origin", "none") or (given and f"{given.scheme}://{given.netloc}" not in ours):
            return text(403, "403 forbidden: a label must be sent from this results page (cross-site request)")
        if (headers.get("Content-Type") or "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return text(415, "415 unsupported media type: send the label form (application/x-www-form-urlencoded)")
        row = self.ledger.get(row_id)
        if row is None:
            return self._missing_row(row_id, None)
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                                  max_num_fields=10))
        except UnicodeDecodeError:
            return text(400, "400 bad request: the form is not valid UTF-8")
        except ValueError:
            return text(400, "400 bad request: the form has more fields than the label form's")

        def again(status: int, why: str) -> Response:
            resp = self.result_page(row, label_error=why, form=form)
            resp.status = status
            return resp
        if not self._csrf_ok(row_id, form.get("csrf", "")):
            return again(403, "This form has expired or did not come from this page (CSRF check). The page is "
                              "reloaded with a new form: enter the label again.")
        try:
            password_ok = self.writer.verify(form.get("password", ""), client, f"for a label of result {row_id}")
        except Locked as exc:
            resp = again(429, f"Too many wrong write passwords from your address: try again in "
                              f"{exc.retry_after} s. The label was not saved.")
            resp.headers["Retry-After"] = str(exc.retry_after)
            return resp
        if not password_ok:  # logged by Password.verify
            return again(403, "Wrong write password: the label was not saved.")
        try:
            lab = self.labeller(row_id, form.get("kind", ""), form.get("by", ""), form.get("note", ""))
        except LabelError as exc:
            return again(400, f"The label was not saved: {exc}.")
        log.info("results page: result %d labelled %s by %s", row_id, lab.kind, lab.who)
        return Response(303, b"", "text/plain; charset=utf-8", {"Location": f"/result/{row_id}?labelled=1#label"})
