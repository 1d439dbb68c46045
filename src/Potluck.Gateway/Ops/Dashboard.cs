using System.Collections.Frozen;
using System.Text;

namespace Potluck.Gateway.Ops;

/// <summary>
/// The pool dashboard's files, embedded in this assembly (Ops/Dashboard/*, no CDN: a gateway may be offline):
/// index.html (the page), login.html (the admin-key form, Access/DashboardLogin.cs), dashboard.css and dashboard.js
/// (served at /dashboard/NAME by <see cref="DashboardEndpoints"/>). The script polls /api/pool, /api/stats/recent,
/// /api/sessions and /api/events once a second and draws everything itself (SVG).
/// </summary>
internal static class Dashboard
{
    /// <summary>Assets by file name, with their content types.</summary>
    public static readonly FrozenDictionary<string, (byte[] Content, string ContentType)> Assets = new Dictionary<string, (byte[], string)>(StringComparer.Ordinal)
    {
        ["dashboard.css"] = (Read("dashboard.css"), "text/css; charset=utf-8"),
        ["dashboard.js"] = (Read("dashboard.js"), "text/javascript; charset=utf-8"),
    }.ToFrozenDictionary(StringComparer.Ordinal);

    private static readonly string PageHtml = Encoding.UTF8.GetString(Read("index.html"));
    private static readonly string LoginHtml = Encoding.UTF8.GetString(Read("login.html"));

    /// <summary>The dashboard; <paramref name="loggedIn"/> adds the logout button.</summary>
    public static string Page(bool loggedIn) => PageHtml.Replace("<!--logout-->", loggedIn ? LogoutForm : "", StringComparison.Ordinal);

    /// <summary>The login form, with an optional error line (plain text, HTML-encoded here).</summary>
    public static string Login(string? error) => LoginHtml.Replace("<!--error-->",
        error is null ? "" : $"<p class=\"bad\">{System.Net.WebUtility.HtmlEncode(error)}</p>", StringComparison.Ordinal);

    private const string LogoutForm = """<form method="post" action="/logout" class="logout"><button type="submit">Log out</button></form>""";

    private static byte[] Read(string name)
    {
        using var stream = typeof(Dashboard).Assembly.GetManifestResourceStream("dashboard/" + name)
            ?? throw new InvalidOperationException($"the gateway assembly lacks its embedded dashboard file {name}");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}
