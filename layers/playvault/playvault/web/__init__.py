"""The HTTP side of PlayVault, shared by every HttpApi function (functions/auth, functions/account):
page rendering (pages), the error-to-response mapping and the route table of the API (http), and
sessions, CSRF and cookie rules (sessions). The domain modules know nothing of it."""
