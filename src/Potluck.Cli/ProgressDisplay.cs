using Spectre.Console;

namespace Potluck.Cli;

/// <summary>Shows long work as a Spectre progress bar on a terminal, and as one stderr line per stage elsewhere (CI, pipes).</summary>
public static class ProgressDisplay
{
    public static bool Interactive => AnsiConsole.Profile.Capabilities.Interactive && !Console.IsOutputRedirected;

    public static T Run<T>(string title, Func<IProgress<(string Stage, double Fraction)>, T> work)
    {
        if (!Interactive)
        {
            var lines = new StageLines(title);
            return work(lines);
        }
        T result = default!;
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(context =>
            {
                var task = context.AddTask(Markup.Escape(title), maxValue: 1.0);
                result = work(new BarUpdates(task, title));
                task.Value = 1.0;
            });
        return result;
    }

    public static async Task<T> RunAsync<T>(string title, Func<IProgress<(string Stage, double Fraction)>, Task<T>> work)
    {
        if (!Interactive) return await work(new StageLines(title));
        T result = default!;
        await AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .StartAsync(async context =>
            {
                var task = context.AddTask(Markup.Escape(title), maxValue: 1.0);
                result = await work(new BarUpdates(task, title));
                task.Value = 1.0;
            });
        return result;
    }

    /// <summary>Synchronous (not Progress&lt;T&gt;): updates must not arrive after the bar has finished.</summary>
    private sealed class BarUpdates(ProgressTask task, string title) : IProgress<(string Stage, double Fraction)>
    {
        public void Report((string Stage, double Fraction) value)
        {
            task.Description = Markup.Escape($"{title}: {value.Stage}");
            task.Value = Math.Clamp(value.Fraction, 0, 1);
        }
    }

    private sealed class StageLines(string title) : IProgress<(string Stage, double Fraction)>
    {
        private readonly Lock _gate = new();
        private string? _lastStage;

        public void Report((string Stage, double Fraction) value)
        {
            lock (_gate)
            {
                if (value.Stage == _lastStage) return;
                _lastStage = value.Stage;
            }
            Console.Error.WriteLine($"potluck: {title}: {value.Stage}");
        }
    }
}

/// <summary>An IProgress that runs the callback inline, unlike Progress&lt;T&gt; which posts it for later.</summary>
public sealed class SynchronousProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
