using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;
using Microsoft.Extensions.Options;

namespace Potluck.Hosting;

/// <summary>Options of <see cref="OneLineConsoleFormatter"/> (Logging:Console:FormatterOptions:*).</summary>
public sealed class OneLineConsoleFormatterOptions : ConsoleFormatterOptions
{
    /// <summary>Write the whole exception (stack trace included) under the line; set by --verbose.</summary>
    public bool IncludeExceptionDetails { get; set; }
}

/// <summary>
/// Every log entry on one line, <c>warn: Category: message (cause)</c>: an operator reading a
/// console or `docker logs` sees what failed, not a stack trace. With <see cref="OneLineConsoleFormatterOptions.IncludeExceptionDetails"/>
/// the full exception follows on the next lines.
/// </summary>
public sealed class OneLineConsoleFormatter : ConsoleFormatter, IDisposable
{
    public const string FormatterName = "potluck";

    private readonly IDisposable? _reload;
    private OneLineConsoleFormatterOptions _options;

    public OneLineConsoleFormatter(IOptionsMonitor<OneLineConsoleFormatterOptions> options) : base(FormatterName)
    {
        _options = options.CurrentValue;
        _reload = options.OnChange(updated => _options = updated);
    }

    public override void Write<TState>(in LogEntry<TState> logEntry, IExternalScopeProvider? scopeProvider, TextWriter textWriter)
    {
        var message = logEntry.Formatter?.Invoke(logEntry.State, logEntry.Exception);
        if (string.IsNullOrEmpty(message) && logEntry.Exception is null) return;
        var options = _options;
        if (options.TimestampFormat is { } format)
            textWriter.Write((options.UseUtcTimestamp ? DateTimeOffset.UtcNow : DateTimeOffset.Now).ToString(format, System.Globalization.CultureInfo.InvariantCulture));
        textWriter.Write(LevelText(logEntry.LogLevel));
        textWriter.Write(": ");
        textWriter.Write(logEntry.Category);
        textWriter.Write(": ");
        if (options.IncludeScopes && scopeProvider is not null)
            scopeProvider.ForEachScope((scope, writer) => { writer.Write(scope); writer.Write(" => "); }, textWriter);
        textWriter.Write(OneLine(message));
        if (logEntry.Exception is { } exception)
        {
            if (options.IncludeExceptionDetails)
            {
                textWriter.WriteLine();
                textWriter.Write(exception.ToString());
            }
            else
            {
                textWriter.Write(" (");
                textWriter.Write(Summary(exception));
                textWriter.Write(')');
            }
        }
        textWriter.WriteLine();
    }

    /// <summary>The innermost exception's message (its type only when it has none): the cause, which outer wrappers only repeat.</summary>
    public static string Summary(Exception exception)
    {
        var root = exception;
        while (root.InnerException is { } inner) root = inner;
        var message = OneLine(root.Message);
        return message.Length > 0 ? message : root.GetType().Name;
    }

    private static string OneLine(string? text) =>
        string.IsNullOrEmpty(text) ? "" : string.Join(' ', text.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    private static string LevelText(LogLevel level) => level switch
    {
        LogLevel.Trace => "trce",
        LogLevel.Debug => "dbug",
        LogLevel.Information => "info",
        LogLevel.Warning => "warn",
        LogLevel.Error => "fail",
        LogLevel.Critical => "crit",
        _ => "none",
    };

    public void Dispose() => _reload?.Dispose();
}
