namespace Potluck.Gateway.Ops;

/// <summary>
/// A one-file pool dashboard: polls /api/pool and draws layer coverage and the node table. With an admin key set it
/// is behind a login form (Access/DashboardLogin.cs); its fetches then carry the login cookie.
/// </summary>
internal static class Dashboard
{
    /// <summary>The dashboard; <paramref name="loggedIn"/> adds the logout button.</summary>
    public static string Page(bool loggedIn) => Html.Replace("<!--logout-->", loggedIn ? LogoutForm : "", StringComparison.Ordinal);

    /// <summary>The login form, with an optional error line (plain text, HTML-encoded here).</summary>
    public static string Login(string? error) => LoginHtml.Replace("<!--error-->",
        error is null ? "" : $"<p class=\"bad\">{System.Net.WebUtility.HtmlEncode(error)}</p>", StringComparison.Ordinal);

    private const string LogoutForm = """<form method="post" action="/logout" class="logout"><button type="submit">Log out</button></form>""";

    private const string LoginHtml = """
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Potluck pool: log in</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
 h1 { font-size: 1.4em; } .bad { color: #c33; } input { font: inherit; padding: 4px; width: 24em; } button { font: inherit; padding: 4px 12px; }
</style>
</head>
<body>
<h1>Potluck pool</h1>
<p>This gateway's dashboard needs its admin key (<code>--admin-key</code>).</p>
<!--error-->
<form method="post" action="/login">
<label>Admin key <input type="password" name="key" autocomplete="current-password" autofocus required></label>
<button type="submit">Log in</button>
</form>
</body>
</html>
""";

    private const string Html = """
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Potluck pool</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
 h1 { font-size: 1.4em; } table { border-collapse: collapse; margin-top: 1em; }
 th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; }
 .bar { display: flex; height: 18px; margin: 1em 0; border: 1px solid #999; max-width: 800px; }
 .bar div { flex: 1; border-right: 1px solid #fff; } .ok { background: #4a9; } .gap { background: #d55; }
 .bad { color: #c33; } code { background: #f4f4f4; padding: 1px 4px; }
 .logout { float: right; } button { font: inherit; padding: 2px 10px; }
</style>
</head>
<body>
<!--logout-->
<h1>Potluck pool <span id="model"></span></h1>
<div id="status"></div>
<div class="bar" id="bar"></div>
<table><thead><tr><th>Node</th><th>Layers</th><th>State</th><th>Sessions</th><th>Free KV</th><th>ms/token</th><th>Hop ms</th><th>PID</th><th>Endpoint</th></tr></thead>
<tbody id="nodes"></tbody></table>
<p>API: <code>POST /v1/chat/completions</code> · <a href="/api/pool">/api/pool</a> · <a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a></p>
<script>
const text = (tag, value, cls) => { const e = document.createElement(tag); e.textContent = value; if (cls) e.className = cls; return e; };
async function refresh() {
  try {
    const response = await fetch('/api/pool', { cache: 'no-store', credentials: 'same-origin' });
    // The login cookie expired (or the gateway restarted): the page shows the login form again.
    if (response.status === 401) { location.reload(); return; }
    if (!response.ok) { const s = document.getElementById('status'); s.textContent = (await response.json()).error.message; s.className = 'bad'; return; }
    const pool = await response.json();
    document.getElementById('model').textContent = '— ' + pool.model.name + ' (' + pool.model.layers + ' layers)';
    const status = document.getElementById('status');
    status.textContent = pool.coverage.full_chain ? 'Ready: ' + pool.coverage.route : 'Not ready: ' + pool.coverage.problem;
    status.className = pool.coverage.full_chain ? '' : 'bad';
    const bar = document.getElementById('bar'); bar.replaceChildren();
    const gaps = new Set();
    for (const g of pool.coverage.gaps) for (let l = g.start; l < g.end; l++) gaps.add(l);
    for (let l = 0; l < pool.model.layers; l++) { const d = document.createElement('div'); d.className = gaps.has(l) ? 'gap' : 'ok'; d.title = 'layer ' + l; bar.appendChild(d); }
    const body = document.getElementById('nodes'); body.replaceChildren();
    for (const n of pool.nodes) {
      const row = document.createElement('tr');
      row.append(text('td', n.id), text('td', n.span.start + '–' + (n.span.end - 1)), text('td', n.state + (n.problem ? ' (' + n.problem + ')' : ''), n.state === 'healthy' ? '' : 'bad'),
        text('td', n.open_sessions), text('td', n.free_kv_tokens + ' / ' + n.kv_budget_tokens), text('td', n.ms_per_token),
        text('td', n.hop_latency_ms ?? '–'), text('td', n.process_id ?? '–'), text('td', n.endpoint));
      body.appendChild(row);
    }
  } catch (e) { document.getElementById('status').textContent = 'gateway unreachable: ' + e; }
}
refresh(); setInterval(refresh, 2000);
</script>
</body>
</html>
""";
}
