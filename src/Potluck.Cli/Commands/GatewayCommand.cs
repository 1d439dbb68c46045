using System.CommandLine;

namespace Potluck.Cli.Commands;

/// <summary>`potluck gateway`: the OpenAI-compatible front door; holds only the head tensors and the tokenizer.</summary>
public static class GatewayCommand
{
    public static Command Create()
    {
        var model = new Option<FileInfo>("--model") { Description = "The GGUF file (only the embedding, final norm, LM head and tokenizer are used)", Required = true };
        var host = new Option<string>("--host") { Description = "Address to listen on", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "HTTP port of the OpenAI API", DefaultValueFactory = _ => 8080 };
        var parentPid = HostedCommand.ParentPidOption();
        var command = new Command("gateway", "Run the gateway alone: the OpenAI API, the model head, routing and failover")
        {
            model, host, port, parentPid,
        };
        command.SetAction(async (parse, _) =>
        {
            HostedCommand.ValidatePort(parse.GetValue(port), "--port");
            var modelFile = parse.GetRequiredValue(model);
            ModelCommands.InspectOrFail(modelFile.FullName);
            return await HostedCommand.RunAsync(parse.GetValue(parentPid), _ =>
                throw new CliFailureException("the gateway service is not part of this build yet"));
        });
        return CliApplication.AddExamples(command,
            "potluck gateway --model ./model.gguf --port 8080",
            "potluck gateway --model ./model.gguf --host 0.0.0.0");
    }
}
