using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Configuration.Memory;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Potluck.Hosting;

/// <summary>
/// The one log setup of every Potluck host (node and gateway): Potluck's own messages at Information, Orleans,
/// ASP.NET Core, gRPC and HttpClient at Warning, one line per entry (an exception as its type and message), and no
/// request logging. <c>Potluck:Logging:Verbose</c> brings back debug logs and full stack traces;
/// <c>Potluck:Logging:AccessLog</c> adds one line per HTTP request. Any <c>Logging:*</c> key an operator sets
/// (environment, appsettings) still wins: these are only the lowest-priority defaults.
/// </summary>
public static class PotluckLogging
{
    public const string VerboseKey = "Potluck:Logging:Verbose";
    public const string AccessLogKey = "Potluck:Logging:AccessLog";

    /// <summary>The environment variables of the two keys (what `--verbose` and `--access-log` set for the host).</summary>
    public const string VerboseVariable = "Potluck__Logging__Verbose";
    public const string AccessLogVariable = "Potluck__Logging__AccessLog";

    /// <summary>Category of the access log's lines.</summary>
    public const string AccessLogCategory = "Potluck.Access";

    /// <summary>Defaults without --verbose: frameworks speak only when something is wrong.</summary>
    public static readonly IReadOnlyDictionary<string, string?> QuietDefaults = new Dictionary<string, string?>
    {
        // No Default: the framework's own default (Information) stays, and so does a test's SetMinimumLevel.
        ["Logging:LogLevel:Microsoft"] = "Warning",
        ["Logging:LogLevel:Orleans"] = "Warning",
        // A dead peer is an expected fault: Orleans warns about every refused connection and missed probe (about ten
        // lines a peer, with stack traces); PoolMemberWatch says it once. --verbose shows them all.
        ["Logging:LogLevel:Orleans.Runtime.Messaging"] = "Error",
        ["Logging:LogLevel:Orleans.Runtime.MembershipService.SiloHealthMonitor"] = "Error",
        // Cancelling calls to a dead silo fails too; its error pastes the whole stack trace into the message.
        ["Logging:LogLevel:Orleans.Runtime.GrainCallCancellationManager"] = "Critical",
        // A message Orleans cannot address (no silo for that grain yet, just after joining) fails back to the caller,
        // which reports it; Orleans' own error line about it only repeats that.
        ["Logging:LogLevel:Orleans.Messaging"] = "Critical",
        // A silo that cannot start (its port taken) fails the host's start, which the host reports in one line.
        ["Logging:LogLevel:Orleans.Runtime.SiloLifecycleSubject"] = "Critical",
        ["Logging:LogLevel:Grpc"] = "Warning",
        // Orleans retries placement through Polly, which logs every attempt (the last one as an error); what finally
        // fails reaches the caller as an exception.
        ["Logging:LogLevel:Polly"] = "Critical",
        ["Logging:LogLevel:System.Net.Http"] = "Warning",
        ["Logging:LogLevel:StackExchange"] = "Warning",
        ["Logging:Console:FormatterName"] = OneLineConsoleFormatter.FormatterName,
    };

    /// <summary>Defaults with --verbose: everything at Debug, exceptions in full.</summary>
    public static readonly IReadOnlyDictionary<string, string?> VerboseDefaults = new Dictionary<string, string?>
    {
        ["Logging:LogLevel:Default"] = "Debug",
        ["Logging:Console:FormatterName"] = OneLineConsoleFormatter.FormatterName,
        ["Logging:Console:FormatterOptions:IncludeExceptionDetails"] = "true",
    };

    /// <summary>Applies the setup to a host builder; call it before anything else touches logging.</summary>
    public static WebApplicationBuilder AddPotluckLogging(this WebApplicationBuilder builder)
    {
        var verbose = builder.Configuration.GetValue<bool>(VerboseKey);
        // Index 0: below every source the builder already has, so Logging__* variables and appsettings override it.
        ((IConfigurationBuilder)builder.Configuration).Sources.Insert(0,
            new MemoryConfigurationSource { InitialData = verbose ? VerboseDefaults : QuietDefaults });
        builder.Logging.AddConsoleFormatter<OneLineConsoleFormatter, OneLineConsoleFormatterOptions>();
        WatchdogStartupReport.Register(builder.Services);
        if (builder.Configuration.GetValue<bool>(AccessLogKey))
            builder.Services.AddSingleton<IStartupFilter, AccessLogStartupFilter>();
        return builder;
    }
}
