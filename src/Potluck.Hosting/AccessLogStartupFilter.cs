using System.Diagnostics;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Logging;

namespace Potluck.Hosting;

/// <summary>
/// The opt-in access log (<see cref="PotluckLogging.AccessLogKey"/>): one line per HTTP request or gRPC call, written
/// when it ends, outermost in the pipeline so every answer counts. The query string is left out (it can carry keys).
/// </summary>
internal sealed partial class AccessLogStartupFilter(ILoggerFactory loggers) : IStartupFilter
{
    private readonly ILogger _log = loggers.CreateLogger(PotluckLogging.AccessLogCategory);

    public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
    {
        app.Use(async (context, following) =>
        {
            var started = Stopwatch.GetTimestamp();
            var failed = false;
            try
            {
                await following(context);
            }
            catch
            {
                failed = true;
                throw;
            }
            finally
            {
                var status = failed && !context.Response.HasStarted ? 500 : context.Response.StatusCode;
                LogRequest(_log, context.Connection.RemoteIpAddress?.ToString() ?? "-", context.Request.Method,
                    context.Request.Path.Value ?? "/", context.Request.Protocol, status, Stopwatch.GetElapsedTime(started).TotalMilliseconds);
            }
        });
        next(app);
    };

    [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "{Client} {Method} {Path} {Protocol} {Status} {Milliseconds:F1} ms")]
    private static partial void LogRequest(ILogger logger, string client, string method, string path, string protocol, int status, double milliseconds);
}
