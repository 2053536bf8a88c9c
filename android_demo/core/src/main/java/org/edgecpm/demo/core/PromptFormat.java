package org.edgecpm.demo.core;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The model's chat template as `edgecpm package android` reduces it: a start string picked by the first
 * message's role, a fixed prefix and suffix per role, and the generation prompt. The Python side checks the
 * reduction against the real Jinja template before it writes it, so rendering here is plain concatenation.
 */
public final class PromptFormat {
    public static final String SCHEMA = "edgecpm.prompt-format/1";
    static final String[] ROLES = {"system", "user", "assistant"};

    private final Map<String, String> start = new HashMap<String, String>();
    private final Map<String, String> prefix = new HashMap<String, String>();
    private final Map<String, String> suffix = new HashMap<String, String>();
    private final String generationPrompt;

    PromptFormat(JSONObject o) throws BundleException {
        try {
            if (!SCHEMA.equals(o.getString("schema"))) {
                throw new BundleException("prompt format " + o.getString("schema") + " is not " + SCHEMA);
            }
            for (String role : ROLES) {
                start.put(role, o.getJSONObject("start").getString(role));
                prefix.put(role, o.getJSONObject("prefix").getString(role));
                suffix.put(role, o.getJSONObject("suffix").getString(role));
            }
            generationPrompt = o.getString("generation_prompt");
        } catch (JSONException e) {
            throw new BundleException("bundle prompt format is malformed: " + e.getMessage());
        }
    }

    /** The prompt text for `messages`, ending with the assistant's opening when `addGenerationPrompt`. */
    public String render(List<ChatMessage> messages, boolean addGenerationPrompt) {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < messages.size(); i++) {
            ChatMessage m = messages.get(i);
            if (!prefix.containsKey(m.role)) {
                throw new IllegalArgumentException("unknown chat role " + m.role);
            }
            if (i == 0) {
                sb.append(start.get(m.role));
            }
            sb.append(prefix.get(m.role)).append(m.content).append(suffix.get(m.role));
        }
        if (addGenerationPrompt) {
            sb.append(generationPrompt);
        }
        return sb.toString();
    }
}
