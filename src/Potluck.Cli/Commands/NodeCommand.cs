using System.CommandLine;

namespace Potluck.Cli.Commands;

/// <summary>`potluck node`: one node process (an Orleans silo plus the Stage gRPC server) holding a span of layers.</summary>
public static class NodeCommand
{
    public static Command Create()
    {
        var model = new Option<FileInfo>("--model") { Description = "The GGUF file this node serves layers of", Required = true };
        var layers = new Option<string?>("--layers") { Description = "Layers to load as A-B, meaning [A, B); default: the node picks a span the pool needs" };
        var join = new Option<string?>("--join") { Description = "The pool to join: the gateway URL or an Orleans seed host:port" };
        var token = new Option<string?>("--token") { Description = "Pool join token" };
        var host = new Option<string>("--host") { Description = "Address to listen on", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "gRPC port for hidden states (0 = any free port)", DefaultValueFactory = _ => 0 };
        var parentPid = HostedCommand.ParentPidOption();
        var command = new Command("node", "Run one node: load a span of the model's layers and serve it to the pool")
        {
            model, layers, join, token, host, port, parentPid,
        };
        command.SetAction(async (parse, _) =>
        {
            var layerText = parse.GetValue(layers);
            if (layerText is not null) HostedCommand.ParseLayers(layerText);
            HostedCommand.ValidatePort(parse.GetValue(port), "--port");
            var modelFile = parse.GetRequiredValue(model);
            ModelCommands.InspectOrFail(modelFile.FullName);
            return await HostedCommand.RunAsync(parse.GetValue(parentPid), _ =>
                throw new CliFailureException("the node service is not part of this build yet"));
        });
        return CliApplication.AddExamples(command,
            "potluck node --model ./model.gguf --layers 0-16 --join http://gateway.lan:8080",
            "potluck node --model ./model.gguf --join gateway.lan:11111 --token $POOL_TOKEN");
    }
}
