"""The operator's console at ``/ui``: server-rendered pages over the running gateway.

    access   (login, session cookie, CSRF tokens; throttle: failed logins)  → app (the /ui
    routes) → views (what pages show: the admin API's data, the release store, the review
    queue, the capture audit, the ledger) → templates/ (Jinja2, autoescaped) with static/ (one
    stylesheet, one script)
    overview (ledger rows → figures, reusing offline/reports) → charts (SVG, drawn here)
    actions  (what forms change: release transitions, review labels)

It sits on top of ``serving`` (``serving.app`` hands it ``/ui`` and ``/ui/*``) and reads what
the gateway's ``Runtime`` holds; nothing on the request path of ``/v1`` goes through it.
``turnout.console.app.Console`` is what ``serving.app`` builds.
"""
