"""sha256 of every file of the shared data folder, as its MANIFEST.md records them.

``innerloop data verify`` checks a data root against these, so a truncated copy or a different
file is caught before hours of training on it. The values were taken from the manifest (which
also says where each file came from); Lake's original Omniglot zips are checked by md5 instead
(:data:`~innerloop_training.data.omniglot.OMNIGLOT_MD5`, the published digests).
"""

from __future__ import annotations

SHARED_DATA_SHA256: dict[str, str] = {
    "omniglot/images_background.npz": (
        "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199"
    ),
    "omniglot/images_evaluation.npz": (
        "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276"
    ),
    "omniglot/images_background_small1.zip": (
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"
    ),
    "omniglot/images_background_small2.zip": (
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"
    ),
    "quickdraw/apple.npy": "d5f9e9aabd8c7cbac0e51306782f63a8498716d3b46a082f4ad8e5d4136e308c",
    "quickdraw/bicycle.npy": "e42ea9c178b2541f81d65f41044ce772ac15fc52568110bbf919fd0cf17aa94f",
    "quickdraw/cat.npy": "ba958d77e2bde2deabe1138de73170638c12a32dd2f65801e320e2210a46e62e",
    "quickdraw/diamond.npy": "ead0ced6518c98f3ff66649d528627e52ae91f4a47356a2c126e0d3abced8173",
    "quickdraw/eye.npy": "36fe1ee036eeed71d40a76cba2b73be77159e7c581997d48e1c4845b9dabe714",
    "quickdraw/fish.npy": "61949beb3168497f006a80627f5cf9dad6c554f5768ca1e00da3e746cc250034",
    "quickdraw/bee.npy": "20787a23d79a5280963d09a5136bf9593c1bcd9e986d2b5bbf6ec98f84335f65",
    "quickdraw/clock.npy": "09d347969ab6f5e1bed353a8d033771b5a54f62d38b8cd361c5cb6b5d38594a3",
    "quickdraw/frog.npy": "e99124d1a8e5927381efb094e39eb615d63b0647ef91d548110a41b8e48b7dc8",
    "quickdraw/The Mona Lisa.npy": (
        "452145bd4f50674389b50e7d896e44d49665f7e7a54e9353465af08ea4ff5f5b"
    ),
    "quickdraw/rainbow.npy": "e8acbb910c1e496a0e96567a475aa757f89e22231ef9d5023a32d8df8bcf084d",
    "quickdraw/train.npy": "19adb45d203701256de415abc96296e671cf4fa5dfce8c516407d295f0f7c877",
    "quickdraw/airplane.npy": "cac4cf05e65f5f1c47e8be131846cd755ed2341324838eb124c363c5b39dd20e",
    "quickdraw/angel.npy": "e95e357f4f293afb60c0c01c5434e64048bab5ad4bc4cea79467c3763af2c3d5",
    "quickdraw/bear.npy": "429c78c9b5646a771a0f378320d3e7e6f0faf2ca940e9a802cb5b5f3f589cc7a",
    "quickdraw/bird.npy": "840811d601f09884af6e88ff0fb9cb43426fbf6aed291d6fcdae5d9649002a8c",
    "quickdraw/boomerang.npy": "8908e3ea5b8b7ac04e287111c57b2371b5a232e0b495f588dcf0954e73bcf4b9",
    "quickdraw/butterfly.npy": "b31c69b27bba4669aebed619965703523917952a3286c507cb1e9ca818b3a7f1",
    "quickdraw/calculator.npy": "13522d26a7166de8a58912611e8b53a5ca4d63a43f3cfa610bae91b06b61d93e",
    "quickdraw/camera.npy": "08d1c7f15420002ec1aa7e6bed13ce35b6a30b5893bfd650b42a8101c7359394",
    "quickdraw/candle.npy": "7946dca72eefe46efd89cc67096022df02d0480c9a363e090431c1fe24af7af3",
    "quickdraw/car.npy": "7c91cc504d9c7a6fdd5ee424d27a20b5354da785abed38526a46415227006ae4",
    "quickdraw/carrot.npy": "3bb9130cab229e9baa97c954d0d420ba3c1e4bbd798b7a6a09b3f9322b0b1997",
    "quickdraw/circle.npy": "851967c0d2d0027768f04806de2322e4ebabf7b1bf4982cfcc366b3153f80f43",
    "quickdraw/computer.npy": "cca5c542e52c8f1a93c95ddc9d045d6c903006692566d41a2552c38a973f0fda",
    "quickdraw/cookie.npy": "c4697aaebaa2957ca40706c5b0905882d89338df40da826456ee029c33160f0b",
    "quickdraw/crayon.npy": "046cb91201340d8293601333fca98fbbd558f481a42c75d116da4d2a1fd10cfd",
    "quickdraw/crown.npy": "0431c6b76ce1c4b69e982b008e23358a8e182490c10e246d0dd5ac31e981eb68",
    "quickdraw/dog.npy": "47a2e343bf12c579d9516d0fe4c04dcafc723787215f340066dde4a9eee9cb1f",
    "quickdraw/donut.npy": "d94f5fd5ba4ce1a05898a9b1a222ad770d1bc545d46cd9d550aa4a71709b3be3",
    "quickdraw/dragon.npy": "93f776d4ba8a917857369b0d03f16c2ac15b3c2a6706f3d142f547285daface7",
    "quickdraw/duck.npy": "a2b73bef320172641ae6918a7721b343d0c678d47986b44c1e79d56a0c1ea37d",
    "quickdraw/flower.npy": "cdae1c281dfd62aad736c1d5bf1556d3b674681a82493a503ccad5cdde79927d",
    "quickdraw/guitar.npy": "9c317e9b001572400acd5d69c563b26bd003f0c7758ed53be3df87b00873e3e2",
    "quickdraw/headphones.npy": "0c2f6dbee01817bf397cd618902bab5f3cebeb3d10e1a29627d5317087541be2",
    "quickdraw/horse.npy": "ff3080443a9725ab883181ae166da83c9350d16f2b4025c06b59c688fcb61430",
    "quickdraw/house.npy": "68613f02bc562bf1a2572a3476ac962582acb1c98e3e6a7e934d3147307202d8",
    "quickdraw/house plant.npy": "41be1874b7e7c10cad6c3853ae182fa0e5d19fe7e0966288ca43960d7db18dd1",
    "quickdraw/lion.npy": "5105022ea3e795ae8bd0de159cb3c5d855d3eae7728cebb656bebfb318f47223",
    "quickdraw/map.npy": "a423603e8faf2db2e9ff11bcc52251a88de9400ee4a57ba56b154e9e3f3f886c",
    "quickdraw/monkey.npy": "2f0aab18f7fa6d597c97c176cf8cab27766a81cf54155d1bef89a26cfab7b877",
    "quickdraw/octopus.npy": "cb1fc1fd9b665730d847a708b4f411fb5c77a02eb5513a975972aa19943442fe",
    "quickdraw/owl.npy": "0ad9d4ea0ad1f63dab0c7943b55fa88e3cce0677444df5605882c007e813e911",
    "quickdraw/paint can.npy": "9de833f63ac5edd5c65bd16634ff081ae22af8cbde9c61899ef5cf0da48f53e3",
    "quickdraw/paintbrush.npy": "8d732f5947403e7c11d34e503cebd4444a2fb39080bc675fcd961911fd3ff25d",
    "quickdraw/pizza.npy": "2d8925a0a102252a46272d80be4a71ef951dc3801825691a20dcd8939636dc12",
    "quickdraw/rabbit.npy": "110336aeb07edc5f425e29999bdfd72a73306f547c31560674304cf173bd8dd3",
    "quickdraw/scissors.npy": "6b381333d5a7b2704f24cd2732b3f412760008e33025b432fae6ef1a2d72fa2d",
    "quickdraw/sea turtle.npy": "1f26d692eb39c45fb10a30c7b49fcd4fb51bd9208b5fa20a98672a2e832d450b",
    "quickdraw/sheep.npy": "16463e35785d317cf23bf7442f1e854fc441436cfd8716c71a3bd44c1fd4cd4f",
    "quickdraw/skull.npy": "4a85948dec40876193d4dc63e6ed3d620673d2367a7796f905e68430b31b5dce",
    "quickdraw/smiley face.npy": "9dcbf01217ceb8e6542fc7118ee100ac942c3d5fe48c357d270916e6408fd366",
    "quickdraw/snowflake.npy": "bf0f019dd02c38b4278e96d286bc5dc3b7ad0f7fddbbe1f1f9d5d82c3aea4559",
    "quickdraw/snowman.npy": "454e4be6832be9672dbfde144ab4c099cb949ac77264440b30c0bb1757b18863",
    "quickdraw/square.npy": "ac8cf2977900e2edbbcbbf7bd28e88cae24ea025048807e792151b841f90d5a4",
    "quickdraw/star.npy": "75b01fc30f5adc6aada4218798032442757431d0709b0b1f0361a813d8cd15ea",
    "quickdraw/television.npy": "43052675530d09592e5bf944b1f736bc0393c6ff6d5d37231a6c4ef4f758e8ba",
    "quickdraw/tractor.npy": "5577cbd6b5c92d7c0f31efe8ab081d28853d4e15d16fe6f4a6fdc3aa5a2cb4de",
    "quickdraw/tree.npy": "787f390f40cae09b42c2fb9b4b164df0c0bfe76eb9cc0d15e3cc49a712e32d81",
    "quickdraw/umbrella.npy": "98bf562cd659f4c415e4b72194f9566fbb291f69b1973842b6ebe5e63335b1dc",
    "quickdraw/zebra.npy": "57f239a9e77d5dd6d6629ebf616875a2c226ca6fc1d6dd3ffe829d2d08c39af7",
    "quickdraw345/quickdraw345_sketches.npz": (
        "9a851bd3c4df2250a14f7877ad10b6bd56be496be6e58cf844559d5e7db2ada7"
    ),
    "quickdraw345/categories.txt": (
        "2ed0dac4ba018854a3e3166f9862e5529bc5f58a80d157d57eee22ca731895d5"
    ),
}
