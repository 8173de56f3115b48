"""The fixed pools raw content is drawn from: photos and banners per style, the streamer's sentences,
viewer comments."""

# photos bundled with scikit-image (never downloaded), per style; grayscale ones are tinted per scene
PHOTOS: dict[str, tuple[str, ...]] = {
    "gaming": ("rocket.jpg", "hubble_deep_field.jpg", "motorcycle_left.png", "chessboard_RGB.png"),
    "singing": ("astronaut.png", "camera.png", "color.png"),
    "chatting": ("coffee.png", "chelsea.png", "clock_motion.png"),
    "outdoor": ("grass.png", "gravel.png", "moon.png", "horse.png", "brick.png"),
    "shopping": ("coins.png", "motorcycle_left.png", "coffee.png", "color.png"),
}
BANNERS: dict[str, tuple[str, ...]] = {
    "gaming": ("PK BATTLE", "CLUTCH TIME"),
    "singing": ("TOP FAN", "GIFT RUSH"),
    "chatting": ("LUCKY DRAW", "GIFT RUSH"),
    "outdoor": ("SUMMIT PUSH", "PK BATTLE"),
    "shopping": ("FLASH SALE", "GIFT RUSH"),
}

SPEECH_OPENERS: dict[str, tuple[str, ...]] = {
    "gaming": ("Alright chat, we are back in ranked.", "Let me try this boss one more time.",
               "Okay squad, we drop at the north side.", "This build is actually pretty strong."),
    "singing": ("Thank you for coming, the next song is a ballad.", "Let me tune the guitar for a second.",
                "This one is a request from the chat.", "I wrote this melody last night."),
    "chatting": ("So tell me how your day was.", "I just made a fresh cup of coffee.",
                 "Let us read some questions from the chat.", "My cat is sleeping right next to me."),
    "outdoor": ("We are hiking up to the lake today.", "The view from this ridge is incredible.",
                "It is getting windy up here.", "We just crossed the old bridge."),
    "shopping": ("The next item is the winter jacket.", "This serum sold out last week.",
                 "Let me show you the stitching up close.", "We have three colours in stock."),
}
SPEECH_TIER: dict[str, tuple[str, ...]] = {
    "low": ("Sorry, my connection keeps dropping, can you hear me?",
            "I am a bit tired today, this might be short.",
            "The camera is acting up again, give me a minute.", "Not many of you here today, that is fine."),
    "mid": ("Nothing special planned, we are just hanging out.", "Let me know what you want to see next.",
            "We will keep going for a while.", "Take your time, no rush tonight."),
    "high": ("The chat is on fire tonight, welcome to all the new friends!",
             "Everyone is here and the sound is perfect, this is the best stream this week!",
             "You are amazing, look at all these people joining!",
             "What an energy today, I love this crowd!"),
}
SPEECH_HOT: dict[str, tuple[str, ...]] = {
    "gaming": ("Final circle, one versus three, this is the clutch moment, send your support!",
               "PK battle starts now, send your gifts to win!"),
    "singing": ("Top fan challenge, the highest gifter picks the next song!",
                "Gift rush is on, every rose counts double!"),
    "chatting": ("Lucky draw in one minute, gifts give you extra tickets!",
                 "Gift rush is on, every rose counts double!"),
    "outdoor": ("We made it to the summit, light up the screen with gifts!",
                "PK battle starts now, send your gifts to win!"),
    "shopping": ("Flash sale, gift now to unlock the secret discount!",
                 "Gift rush is on, every rose counts double!"),
}

COMMENTS_HOT_GENERIC = (
    "PK time!!! everyone send roses", "gift rush lets gooo", "sending a rocket for this",
    "we have to win this",
    "top fan incoming", "go go go 666", "double points now, gifts!", "cannot miss this moment",
    "roses for you", "light it up!!", "everybody gift now", "we are winning, keep sending",
)
COMMENTS_HOT_STYLE: dict[str, tuple[str, ...]] = {
    "gaming": ("that clutch was insane, take my gift", "1v3 lets go, sending a rocket"),
    "singing": ("encore! sending a rose", "my gift for this song"),
    "chatting": ("lucky draw! I want a ticket", "gifting for the draw"),
    "outdoor": ("summit gift for you", "you made it! gift sent"),
    "shopping": ("flash sale! gifting to unlock", "gift sent, show the discount"),
}
COMMENTS_TIER: dict[str, tuple[str, ...]] = {
    "low": ("lagging again...", "cannot hear anything", "so boring today", "the picture is so dark",
            "audio keeps cutting out", "leaving, see you", "is the stream frozen?", "too blurry"),
    "mid": ("hi everyone", "nice", "ok", "what are we doing today", "hello hello", "just got here",
            "chilling", "same as yesterday"),
    "high": ("best stream ever", "this is amazing", "so good tonight", "crystal clear today",
             "love the energy", "you are the best", "wow wow wow", "never leaving this stream"),
}
COMMENTS_NOISE_GENERIC = (
    "hello from brazil", "first time here", "lol", "who else is watching at work", "what phone do you use",
    "hi mom", "brb", "anyone from london?", "what time is it there", "following now", "good morning",
    "is it raining there too", "haha", "can you say hi to me", "greetings from manila", "just woke up",
)
COMMENTS_NOISE_STYLE: dict[str, tuple[str, ...]] = {
    "gaming": ("what rank are you", "which game is this", "what mouse do you use", "try the other map"),
    "singing": ("what is the song name", "play the old one", "which guitar is that", "sing in spanish"),
    "chatting": ("what is the cat's name", "what are you drinking", "where do you live", "tell us a story"),
    "outdoor": ("where is this", "how long is the trail", "are there bears", "what camera is that"),
    "shopping": ("does it come in black", "how much is shipping", "size guide please", "is it waterproof"),
}
