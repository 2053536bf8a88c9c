package org.edgecpm.demo.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * A conversation: each turn renders the whole history with the bundle's prompt format, restarts the engine's
 * context (so the prompt and the KV cache always agree) and streams the reply through a {@link TextStream}.
 */
public final class ChatSession {
    private final BundleManifest manifest;
    private final Engine engine;
    private final Settings settings;
    private final List<ChatMessage> history = new ArrayList<ChatMessage>();
    private GenerationStats lastStats;

    public ChatSession(BundleManifest manifest, Engine engine, Settings settings) throws BundleException {
        if (manifest.promptFormat == null) {
            throw new BundleException("this model's chat template cannot be used on the phone: "
                    + manifest.promptFormatError);
        }
        this.manifest = manifest;
        this.engine = engine;
        this.settings = settings;
    }

    public void setSystemPrompt(String text) {
        if (!history.isEmpty() && "system".equals(history.get(0).role)) {
            history.remove(0);
        }
        if (text != null && !text.isEmpty()) {
            history.add(0, new ChatMessage("system", text));
        }
    }

    /** The prompt the next user message would produce (what the engine is sent). */
    public String promptFor(String userText) {
        List<ChatMessage> msgs = new ArrayList<ChatMessage>(history);
        msgs.add(new ChatMessage("user", userText));
        return manifest.promptFormat.render(msgs, true);
    }

    /** Blocking: sends `userText`, streams the reply to `sink`, returns the reply. */
    public String send(String userText, final TextSink sink) throws BundleException {
        String prompt = promptFor(userText);
        final TextStream stream = new TextStream(settings.stopTexts);
        final GenerationStats[] stats = new GenerationStats[1];
        int reply = settings.replyTokens(prompt);
        if (reply < 1) {
            throw new BundleException("the conversation fills the model's " + settings.contextTokens
                    + "-token context; start a new chat");
        }
        engine.resetContext();
        engine.generate(prompt, reply, settings.temperature, settings.numBos, new Engine.Listener() {
            @Override
            public void onPiece(String piece) {
                String shown = stream.push(piece);
                if (!shown.isEmpty()) {
                    sink.append(shown);
                }
                if (stream.stopped()) {
                    engine.stop();
                }
            }

            @Override
            public void onStats(String json) {
                stats[0] = GenerationStats.fromRunnerJson(json);
            }
        });
        String rest = stream.finish();
        if (!rest.isEmpty()) {
            sink.append(rest);
        }
        history.add(new ChatMessage("user", userText));
        history.add(new ChatMessage("assistant", stream.text()));
        lastStats = stats[0];
        return stream.text();
    }

    public GenerationStats lastStats() {
        return lastStats;
    }

    public List<ChatMessage> history() {
        return Collections.unmodifiableList(history);
    }
}
